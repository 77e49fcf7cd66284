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

Validation is vectorised: numpy builds each array in one C-level call and checks it at once. Only
when that fails does a Python walk run, on that array alone, to name the place at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..model.batch import Batch
from ..model.engine import ModelSpec
from .errors import InvalidInput, Loc, error

MAX_ERRORS = 20  # a body with a million wrong values gets the first few named, not a million-line answer
INT_RANGES = {np.dtype("<i4"): "INT32", np.dtype("<i8"): "INT64"}


@dataclass(frozen=True)
class Limits:
    max_batch_size: int  # sequences per request
    max_steps: int  # steps per sequence
    explain_max_values: int  # with explain: steps (all sequences) x layers x hidden units
    max_body_bytes: int  # request body size
    max_total_values: int  # numbers in inputs, all sequences, real steps only


@dataclass(frozen=True)
class Dim:
    """One axis of a nested JSON array: what one item is called and how many are allowed."""

    label: str
    min: int
    max: int
    names: Sequence[str] = ()  # the items' names, quoted in messages (the model's features)

    def count_error(self, n: int, loc: Loc) -> dict[str, Any] | None:
        names = f" ({', '.join(self.names)})" if self.names else ""
        if self.min == self.max and n != self.min:
            kind = "too_short" if n < self.min else "too_long"
            return error(loc, f"Should have exactly {self.min} {self.label}s{names}, not {n}", kind)
        if n < self.min:
            return error(loc, f"Should have at least {self.min} {_plural(self.label, self.min)}, not {n}", "too_short")
        if n > self.max:
            return error(loc, f"Should have at most {self.max} {_plural(self.label, self.max)}, not {n}", "too_long")
        return None


def _plural(label: str, n: int) -> str:
    return label if n == 1 else label + "s"


def may_hold_booleans(text: bytes, flags: int) -> bool:
    """Whether JSON ``text`` has more ``true``/``false`` literals than the ``flags`` its codec has read as
    booleans: then its number arrays take the exact walk, which rejects booleans numpy would take as 1 and 0.
    (A string holding the word only costs the walk, never a wrong answer.)"""
    return text.count(b"true") + text.count(b"false") > flags


def load_json(body: bytes, loc: Loc = ("body",)) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInput([error((*loc, e.pos), f"JSON decode error: {e.msg}", "json_invalid", error=e.msg)]) from None


def _not_a_number(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, (int, float))


def _walk(obj: Any, loc: Loc, dims: Sequence[Dim], errors: list[dict[str, Any]]) -> None:
    """Append the errors of a nested array, depth first, stopping at MAX_ERRORS. The slow path."""
    if len(errors) >= MAX_ERRORS:
        return
    if not dims:
        if _not_a_number(obj):
            errors.append(error(loc, "Input should be a valid number", "float_type"))
        return
    if not isinstance(obj, list):
        errors.append(error(loc, f"Input should be a list of {dims[0].label}s", "list_type"))
        return
    count = dims[0].count_error(len(obj), loc)
    if count:
        errors.append(count)
        return
    for i, item in enumerate(obj):
        _walk(item, (*loc, i), dims[1:], errors)


def finite_float32(a: np.ndarray, loc: Loc) -> np.ndarray:
    """``a`` as float32, or InvalidInput naming the first value that is not finite within float32's range."""
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, reported below
        out = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(out).all():
        at = tuple(int(i) for i in np.argwhere(~np.isfinite(out))[0])
        raise InvalidInput(
            [error((*loc, *at), "Input should be a finite number within float32 range", "finite_number")]
        )
    return out


def _fast_array(obj: Any, loc: Loc, dims: Sequence[Dim]) -> np.ndarray | None:
    """The array as float32 in one numpy call, or None when it is ragged or not all numbers."""
    try:
        a = np.array(obj)
    except (ValueError, OverflowError):  # ragged
        return None
    if (
        a.dtype.kind not in "fi"
        or a.ndim != len(dims)
        or not all(d.min <= n <= d.max for d, n in zip(dims, a.shape, strict=True))
    ):
        return None
    return finite_float32(a, loc)


def json_array(obj: Any, loc: Loc, dims: Sequence[Dim], exact: bool) -> np.ndarray:
    """A validated float32 array of shape ``dims`` from nested JSON lists, or InvalidInput naming the places
    at fault. ``exact``: the JSON text may hold booleans among the numbers (``may_hold_booleans``)."""
    if not exact:
        a = _fast_array(obj, loc, dims)
        if a is not None:
            return a
    errors: list[dict[str, Any]] = []
    _walk(obj, loc, dims, errors)
    if errors:
        raise InvalidInput(errors)
    with np.errstate(over="ignore"):  # sound, but numpy could not take it in one go (integers past int64)
        return finite_float32(np.array(obj, dtype=np.float64), loc)


def json_sequences(obj: Any, loc: Loc, dims: Sequence[Dim], exact: bool) -> list[np.ndarray]:
    """Sequences that may differ in length, from ``[sequence][step][value]`` JSON lists."""
    if not isinstance(obj, list):
        raise InvalidInput([error(loc, "Input should be a list of sequences", "list_type")])
    count = dims[0].count_error(len(obj), loc)
    if count:
        raise InvalidInput([count])
    whole = None if exact else _fast_array(obj, loc, dims)
    if whole is not None:  # every sequence the same length
        return list(whole)
    seqs: list[np.ndarray] = []
    errors: list[dict[str, Any]] = []
    for i, seq in enumerate(obj):
        try:
            seqs.append(json_array(seq, (*loc, i), dims[1:], exact))
        except InvalidInput as e:
            errors.extend(e.errors)
            if len(errors) >= MAX_ERRORS:
                break
    if errors:
        raise InvalidInput(errors[:MAX_ERRORS])
    return seqs


def json_tensor_data(data: Any, loc: Loc, dtype: np.dtype[Any], exact: bool) -> np.ndarray:
    """Tensor data in JSON (flat or nested, row-major) as ``dtype``: numbers only; an integer type takes
    integers within its range, never a float or a wrapped value."""
    if not isinstance(data, list):
        raise InvalidInput([error(loc, "Input should be a list of numbers", "list_type")])
    flat = _flatten(data) if any(isinstance(v, list) for v in data) else data
    raw: np.ndarray | None
    try:
        raw = None if exact else np.array(flat)
    except (ValueError, OverflowError):
        raw = None
    if raw is None or raw.dtype.kind not in "iuf" or raw.ndim != 1:
        raw = _numbers_exact(flat, loc)
    if dtype.kind == "f":
        return finite_float32(raw, loc) if dtype.itemsize == 4 else _finite(raw.astype(dtype), loc)
    if raw.dtype.kind == "f":
        at = next((i for i, v in enumerate(flat) if isinstance(v, float)), 0)
        raise InvalidInput([error((*loc, at), f"Input should be an integer of {INT_RANGES[dtype]}", "int_type")])
    info = np.iinfo(dtype)
    bad = np.flatnonzero((raw < info.min) | (raw > info.max))
    if len(bad):
        at = int(bad[0])
        msg = f"{raw[at]} is outside {INT_RANGES[dtype]}'s range {info.min}..{info.max}"
        raise InvalidInput([error((*loc, at), msg, "int_range")])
    return raw.astype(dtype)


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _numbers_exact(flat: list[Any], loc: Loc) -> np.ndarray:
    """Flat JSON values checked one by one (the slow path): numbers only; integers beyond int64 stay exact."""
    errors = [
        error((*loc, i), "Input should be a valid number", "float_type") for i, v in enumerate(flat) if _not_a_number(v)
    ]
    if errors:
        raise InvalidInput(errors[:MAX_ERRORS])
    if all(isinstance(v, int) for v in flat):
        big = [i for i, v in enumerate(flat) if not -(2**63) <= v < 2**63]
        if big:
            raise InvalidInput([error((*loc, big[0]), f"{flat[big[0]]} is outside INT64's range", "int_range")])
        return np.array(flat, dtype=np.int64)
    with np.errstate(over="ignore"):
        return np.array([float(v) for v in flat], dtype=np.float64)


def _finite(a: np.ndarray, loc: Loc) -> np.ndarray:
    if not np.isfinite(a).all():
        at = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise InvalidInput([error((*loc, *at), "Input should be a finite number", "finite_number")])
    return a


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


def batch(
    x: list[np.ndarray],
    h0: np.ndarray | None,
    c0: np.ndarray | None,
    spec: ModelSpec,
    limits: Limits,
    places: Places,
    explain: bool = False,
) -> Batch:
    """The validated batch: sequences ``[T_i, F]`` float32 and states ``[L, B, H]`` float32 (or None)."""
    if (h0 is None) != (c0 is None):
        missing = places.c0 if c0 is None else places.h0
        raise InvalidInput([error(missing, "h0 and c0 go together: give both or neither", "missing")])
    n = len(x)
    if not 1 <= n <= limits.max_batch_size:
        msg = f"Should have 1 to {limits.max_batch_size} sequences, not {n}"
        raise InvalidInput([error(places.x, msg, "too_short" if n < 1 else "too_long")])
    lengths = np.fromiter((len(s) for s in x), dtype=np.int64, count=n)
    if any(s.ndim != 2 or s.shape[1] != spec.input_size for s in x):
        i = next(i for i, s in enumerate(x) if s.ndim != 2 or s.shape[1] != spec.input_size)
        raise InvalidInput([error((*places.x, i), f"Each step should hold {spec.input_size} values", "shape")])
    bad = np.flatnonzero((lengths < 1) | (lengths > limits.max_steps))
    if len(bad):
        i = int(bad[0])
        msg = f"Should have 1 to {limits.max_steps} steps, not {lengths[i]}"
        raise InvalidInput([error((*places.x, i), msg, "too_short" if lengths[i] < 1 else "too_long")])
    values = int(lengths.sum()) * spec.input_size
    if values > limits.max_total_values:
        msg = f"Should have at most {limits.max_total_values} values in all, not {values}"
        raise InvalidInput([error(places.x, msg, "too_long", limit=limits.max_total_values)])
    if explain:
        steps = int(lengths.sum())
        explained = steps * spec.num_layers * spec.hidden_size
        if explained > limits.explain_max_values:
            msg = (
                f"An explanation of {steps} steps x {spec.num_layers} layers x {spec.hidden_size} units = "
                f"{explained} values is over the explanation limit of {limits.explain_max_values}; send fewer steps"
            )
            raise InvalidInput([error(places.explain, msg, "too_long", limit=limits.explain_max_values)])
    if h0 is None or c0 is None:
        zeros = np.zeros((spec.num_layers, n, spec.hidden_size), dtype=np.float32)
        return Batch(x, zeros, zeros)
    return Batch(x, h0, c0)
