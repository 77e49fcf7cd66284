"""Every rule a request must meet, once, for every protocol: numbers, ranges, shapes, states, limits.

Codecs turn their wire format into arrays with the helpers here and finish with ``batch``,
which applies the rules on counts and limits, so a rule cannot hold on one protocol and not
on another:

- numbers only: strings, nulls and booleans are not numbers (numpy would read ``true`` as 1);
- float data is finite and within float32's range; integer data fits its type, never wraps;
- shapes: every step holds the model's features, states are ``[layers][units]`` per sequence;
- ``h0`` and ``c0`` go together, or neither is given;
- 1 to ``max_batch_size`` sequences of 1 to ``max_steps`` steps, ``max_total_values`` values in all
  (the real steps, never padding), and the explanation budget.

Arrays come from the protocols' own formats (``jsondata`` reads them out of JSON); the checks here
run on whole arrays at once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from ..model.batch import Batch
from ..model.contract import ModelSpec
from ..settings import Settings
from .errors import InvalidInput, Loc, error

if TYPE_CHECKING:
    from .sequences import SequenceRef

MAX_ERRORS = 20  # a body with a million wrong values gets the first few named, not a million-line answer
INT_RANGES = {np.dtype("<i4"): "INT32", np.dtype("<i8"): "INT64"}


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_batch_size: int  # sequences per request
    max_steps: int  # steps per sequence
    explain_max_values: int  # with explain: steps (all sequences) x layers x hidden units
    max_body_bytes: int  # request body size
    max_total_values: int  # numbers in inputs, all sequences, real steps only
    body_timeout_s: float  # seconds to receive a body

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        return cls(**{f.name: getattr(s, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class Dim:
    """One axis of a nested JSON array: what one item is called and how many are allowed."""

    label: str
    min: int
    max: int
    names: Sequence[str] = ()  # the items' names, quoted in messages (the model's features)

    def count_error(self, n: int, loc: Loc) -> dict[str, Any] | None:
        if self.min <= n <= self.max:
            return None
        names = f" ({', '.join(self.names)})" if self.names else ""
        if self.min == self.max and n != self.min:
            kind = "too_short" if n < self.min else "too_long"
            return error(loc, f"Should have exactly {self.min} {_plural(self.label, self.min)}{names}, not {n}", kind)
        if n < self.min:
            return error(loc, f"Should have at least {self.min} {_plural(self.label, self.min)}, not {n}", "too_short")
        if n > self.max:
            return error(loc, f"Should have at most {self.max} {_plural(self.label, self.max)}, not {n}", "too_long")
        return None


def sequence_dims(spec: ModelSpec, limits: Limits) -> tuple[Dim, Dim, Dim]:
    """``[sequence][step][value]``: how many of each a request may hold, for every reader and ``batch``."""
    return _sequence_dims(spec.input_size, tuple(spec.feature_names), limits.max_batch_size, limits.max_steps)


@functools.cache
def _sequence_dims(features: int, names: tuple[str, ...], max_batch_size: int, max_steps: int) -> tuple[Dim, Dim, Dim]:
    return Dim("sequence", 1, max_batch_size), Dim("step", 1, max_steps), Dim("value", features, features, names)


def state_dims(spec: ModelSpec) -> tuple[Dim, Dim]:
    """``[layer][unit]``: one sequence's h or c."""
    return _state_dims(spec.num_layers, spec.hidden_size)


@functools.cache
def _state_dims(layers: int, units: int) -> tuple[Dim, Dim]:
    return Dim("layer", layers, layers), Dim("unit", units, units)


def _plural(label: str, n: int) -> str:
    return label if n == 1 else label + "s"


def not_a_number(value: Any) -> bool:
    """JSON's numbers only: a boolean is not one (though Python's bool is an int)."""
    return isinstance(value, bool) or not isinstance(value, (int, float))


# The smallest magnitude that float32 rounds to infinity (half an ulp above its largest finite value).
_F32_OVERFLOW = float(2**128 - 2**103)


def finite_float32(a: np.ndarray, loc: Loc) -> np.ndarray:
    """``a`` as float32, or InvalidInput naming the first value that is not finite within float32's range."""
    # Whole-array checks first (NaN fails every comparison); only a refusal looks for the place.
    if a.dtype == np.float32:
        ok = bool(np.isfinite(a).all())
    else:
        ok = a.size == 0 or (a.min() > -_F32_OVERFLOW and a.max() < _F32_OVERFLOW)
    if not ok:
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32's range becomes inf, reported here
            out = np.asarray(a, dtype=np.float32)
        at = tuple(int(i) for i in np.argwhere(~np.isfinite(out))[0])
        msg = "Input should be a finite number within float32 range"
        raise InvalidInput([error((*loc, *at), msg, "finite_number")])
    return np.ascontiguousarray(a, dtype=np.float32)


def tensor_values(values: list[Any] | np.ndarray, loc: Loc, dtype: np.dtype[Any]) -> np.ndarray:
    """Flat tensor values as ``dtype``: numbers only; float types finite; an integer type takes integers
    within its range, never a float or a wrapped value."""
    if isinstance(values, list):
        bad = [i for i, v in enumerate(values) if not_a_number(v)]
        if bad:
            errors = [error((*loc, i), "Input should be a valid number", "float_type") for i in bad]
            raise InvalidInput(errors[:MAX_ERRORS])
        floats = [i for i, v in enumerate(values) if isinstance(v, float)]
        if dtype.kind == "i" and floats:
            msg = f"Input should be an integer of {INT_RANGES[dtype]}"
            raise InvalidInput([error((*loc, floats[0]), msg, "int_type")])
        if dtype.kind == "i":
            return _integers(values, loc, dtype)
        with np.errstate(over="ignore"):
            raw = np.array([float(v) for v in values], dtype=np.float64)
    else:
        raw = values
        if dtype.kind == "i":
            return _integers(raw, loc, dtype)
    if dtype.itemsize == 4:
        return finite_float32(raw, loc)
    if not np.isfinite(raw).all():
        at = int(np.flatnonzero(~np.isfinite(raw))[0])
        raise InvalidInput([error((*loc, at), "Input should be a finite number", "finite_number")])
    return raw.astype(dtype)


def _integers(values: list[int] | np.ndarray, loc: Loc, dtype: np.dtype[Any]) -> np.ndarray:
    info = np.iinfo(dtype)
    if isinstance(values, list):
        bad = [i for i, v in enumerate(values) if not info.min <= v <= info.max]
    else:
        bad = np.flatnonzero((values < info.min) | (values > info.max)).tolist()
    if bad:
        at = int(bad[0])
        msg = f"{values[at]} is outside {INT_RANGES[dtype]}'s range {info.min}..{info.max}"
        raise InvalidInput([error((*loc, at), msg, "int_range")])
    return np.asarray(values, dtype=dtype)


def check_shape(a: np.ndarray, loc: Loc, shape: Sequence[int | None], meaning: str) -> None:
    """``a`` has ``shape`` (None: any size on that axis)."""
    if a.ndim != len(shape) or any(d is not None and d != n for d, n in zip(shape, a.shape, strict=True)):
        dims = ", ".join("-1" if d is None else str(d) for d in shape)
        msg = f"Should have shape [{dims}] ({meaning}), not {list(a.shape)}"
        raise InvalidInput([error(loc, msg, "shape")])


@dataclass(frozen=True)
class Places:
    """Where a protocol's request holds each part, for error locations."""

    x: Loc
    h0: Loc
    c0: Loc
    explain: Loc = ("explain",)


def check_counts(n: int, padded_steps: int | None, spec: ModelSpec, limits: Limits, places: Places) -> None:
    """How many sequences, and (for a padded tensor) how long its time axis: before anything is built."""
    seq_dim, step_dim, _ = sequence_dims(spec, limits)
    if count := seq_dim.count_error(n, places.x):
        raise InvalidInput([count])
    if padded_steps is not None and (count := step_dim.count_error(padded_steps, places.x)):
        raise InvalidInput([count])


def batch(
    x: list[np.ndarray],
    h0: np.ndarray | None,
    c0: np.ndarray | None,
    spec: ModelSpec,
    limits: Limits,
    places: Places,
    explain: bool = False,
    padded_steps: int | None = None,
) -> Batch:
    """The validated batch: sequences ``[T_i, F]`` float32 and states ``[L, B, H]`` float32 (zeros when
    both are None).
    The one place where the counts and limits are decided and worded, for every protocol.
    ``padded_steps``: the time axis the request itself sent (a padded tensor), bounded like a sequence."""
    if (h0 is None) != (c0 is None):
        missing = places.c0 if c0 is None else places.h0
        raise InvalidInput([error(missing, "h0 and c0 go together: give both or neither", "missing")])
    n = len(x)
    check_counts(n, padded_steps, spec, limits, places)
    step_dim = sequence_dims(spec, limits)[1]
    steps = 0
    for i, s in enumerate(x):
        if count := step_dim.count_error(len(s), (*places.x, i)):
            raise InvalidInput([count])
        if s.ndim != 2 or s.shape[1] != spec.input_size or s.dtype != np.float32:
            raise InvalidInput([error((*places.x, i), f"Each step should hold {spec.input_size} values", "shape")])
        steps += len(s)
    values = steps * spec.input_size
    if values > limits.max_total_values:
        msg = f"Should have at most {limits.max_total_values} values in all, not {values}"
        raise InvalidInput([error(places.x, msg, "too_long", limit=limits.max_total_values)])
    if explain:
        explained = steps * spec.num_layers * spec.hidden_size
        if explained > limits.explain_max_values:
            msg = (
                f"An explanation of {steps} steps x {spec.num_layers} layers x {spec.hidden_size} units = "
                f"{explained} values is over the explanation limit of {limits.explain_max_values}; send fewer steps"
            )
            raise InvalidInput([error(places.explain, msg, "too_long", limit=limits.explain_max_values)])
    if h0 is None or c0 is None:
        return Batch(x, *spec.zero_states(n))
    for name, state, place in (("h0", h0, places.h0), ("c0", c0, places.c0)):
        if state.shape != (spec.num_layers, n, spec.hidden_size) or state.dtype != np.float32:
            msg = f"{name} should be float32 [{spec.num_layers} layers][{n} sequences][{spec.hidden_size} units]"
            raise InvalidInput([error(place, msg, "shape")])
        finite_float32(state, place)
    return Batch(x, h0, c0)


def sequence_batch(batch: Batch, ref: SequenceRef, states_given: bool, places: Places) -> None:
    """A chunk of a server-held sequence: one sequence, and initial states only where it starts (after that,
    the server's are the states)."""
    if batch.size != 1:
        msg = f"A request naming a sequence holds one sequence, not {batch.size}"
        raise InvalidInput([error(places.x, msg, "too_long")])
    if states_given and not ref.start:
        msg = "h0 and c0 may only start a sequence; after that the server holds its states"
        raise InvalidInput([error(places.h0, msg, "sequence_states")])
