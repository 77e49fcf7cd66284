"""The /predict wire format: JSON bytes in, a validated ``Batch`` out; results back to JSON bytes.

Validation is vectorised: numpy builds each array in one C-level call and checks
its shape, type and finiteness at once. Only when that fails does a Python walk
run, on that array alone, to name the sequence, step and value at fault in
FastAPI's error shape ``{"loc": [...], "msg": ..., "type": ...}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .engine import Batch, ModelSpec, SequenceResult
from .errors import InvalidInput, Loc, error

FIELDS = ("inputs", "h0", "c0", "explain")
MAX_ERRORS = 20  # a body with a million wrong values gets the first few named, not a million-line answer


@dataclass(frozen=True)
class Limits:
    max_batch_size: int  # sequences per request
    max_steps: int  # steps per sequence
    explain_max_values: int  # with explain: steps (all sequences) x layers x hidden units
    max_body_bytes: int  # request body size
    max_total_values: int  # numbers in inputs, all sequences


@dataclass
class PredictCall:
    """A decoded /predict body."""

    batch: Batch
    explain: bool  # also return per-step gates and states


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


def _walk(obj: Any, loc: Loc, dims: Sequence[Dim], errors: list[dict[str, Any]]) -> None:
    """Append the errors of a nested array, depth first, stopping at MAX_ERRORS. The slow path."""
    if len(errors) >= MAX_ERRORS:
        return
    if not dims:
        if isinstance(obj, bool) or not isinstance(obj, (int, float)):
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


def _finite(a: np.ndarray, loc: Loc) -> np.ndarray:
    if not np.isfinite(a).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise InvalidInput(
            [error((*loc, *where), "Input should be a finite number within float32 range", "finite_number")]
        )
    return a


def _fast_array(obj: Any, loc: Loc, dims: Sequence[Dim]) -> np.ndarray | None:
    """The array as float32 in one numpy call, or None when it is ragged or not all numbers."""
    try:
        a = np.array(obj)
    except ValueError:  # ragged
        return None
    if (
        a.dtype.kind not in "fi"
        or a.ndim != len(dims)
        or not all(d.min <= n <= d.max for d, n in zip(dims, a.shape, strict=True))
    ):
        return None
    with np.errstate(over="ignore"):  # beyond float32 range becomes inf, reported by _finite
        return _finite(a.astype(np.float32), loc)


def to_array(obj: Any, loc: Loc, dims: Sequence[Dim], fast: bool = True) -> np.ndarray:
    """A validated float32 array of shape ``dims``, or InvalidInput naming the places at fault."""
    if fast:
        a = _fast_array(obj, loc, dims)
        if a is not None:
            return a
    errors: list[dict[str, Any]] = []
    _walk(obj, loc, dims, errors)
    if errors:
        raise InvalidInput(errors)
    with np.errstate(over="ignore"):  # sound, but numpy could not take it in one go (integers past int64)
        return _finite(np.array(obj, dtype=np.float64).astype(np.float32), loc)


def load_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(
            [error(("body", e.pos), f"JSON decode error: {e.msg}", "json_invalid", error=e.msg)]
        ) from None


def _inputs(obj: Any, dims: list[Dim], fast: bool) -> tuple[np.ndarray, np.ndarray]:
    """Padded x [B, T, F] and lengths [B] from a list of sequences that may differ in length."""
    loc: Loc = ("body", "inputs")
    if not isinstance(obj, list):
        raise InvalidInput([error(loc, "Input should be a list of sequences", "list_type")])
    count = dims[0].count_error(len(obj), loc)
    if count:
        raise InvalidInput([count])
    whole = _fast_array(obj, loc, dims) if fast else None
    if whole is not None:  # every sequence the same length
        return whole, np.full(len(whole), whole.shape[1], dtype=np.int32)
    seqs: list[np.ndarray] = []
    errors: list[dict[str, Any]] = []
    for i, seq in enumerate(obj):
        try:
            seqs.append(to_array(seq, (*loc, i), dims[1:], fast))
        except InvalidInput as e:
            errors.extend(e.errors)
            if len(errors) >= MAX_ERRORS:
                break
    if errors:
        raise InvalidInput(errors[:MAX_ERRORS])
    lengths = np.array([len(s) for s in seqs], dtype=np.int32)
    x = np.zeros((len(seqs), int(lengths.max()), dims[2].max), dtype=np.float32)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return x, lengths


def _check_explain_size(lengths: np.ndarray, spec: ModelSpec, limits: Limits) -> None:
    steps = int(lengths.sum())
    values = steps * spec.num_layers * spec.hidden_size
    if values > limits.explain_max_values:
        msg = (
            f"An explanation of {steps} steps x {spec.num_layers} layers x {spec.hidden_size} units = {values} "
            f"values is over the explanation limit of {limits.explain_max_values}; send fewer steps"
        )
        raise InvalidInput([error(("body", "explain"), msg, "too_long", limit=limits.explain_max_values)])


def decode_predict(body: bytes, spec: ModelSpec, limits: Limits) -> PredictCall:
    """Parse and validate a /predict body against the model and the limits."""
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise InvalidInput([error(("body",), "Input should be a JSON object", "model_attributes_type")])
    errors = [error(("body", k), "Extra inputs are not permitted", "extra_forbidden") for k in doc if k not in FIELDS]
    if "inputs" not in doc:
        errors.append(error(("body", "inputs"), "Field required", "missing"))
    h0, c0 = doc.get("h0"), doc.get("c0")
    if (h0 is None) != (c0 is None):
        absent = "c0" if c0 is None else "h0"
        errors.append(error(("body", absent), "h0 and c0 go together: give both or neither", "missing"))
    explain = doc.get("explain", False)
    if not isinstance(explain, bool):
        errors.append(error(("body", "explain"), "Input should be a valid boolean", "bool_type"))
    if errors:
        raise InvalidInput(errors)

    # numpy would read the JSON literals true and false as 1 and 0: a body with more of them than the
    # explain flag accounts for takes the exact walk, which rejects them.
    fast = body.count(b"true") + body.count(b"false") == int("explain" in doc)
    dims = [
        Dim("sequence", 1, limits.max_batch_size),
        Dim("step", 1, limits.max_steps),
        Dim("value", spec.input_size, spec.input_size, spec.feature_names),
    ]
    x, lengths = _inputs(doc["inputs"], dims, fast)
    values = int(lengths.sum()) * spec.input_size
    if values > limits.max_total_values:
        msg = f"Should have at most {limits.max_total_values} values in all, not {values}"
        raise InvalidInput([error(("body", "inputs"), msg, "too_long", limit=limits.max_total_values)])
    if explain:
        _check_explain_size(lengths, spec, limits)
    n_seqs = len(lengths)
    if h0 is None:
        zeros = np.zeros((spec.num_layers, n_seqs, spec.hidden_size), dtype=np.float32)
        return PredictCall(Batch(x, zeros, zeros, lengths), explain)
    state_dims = [
        Dim("sequence", n_seqs, n_seqs),  # one per sequence of inputs
        Dim("layer", spec.num_layers, spec.num_layers),
        Dim("unit", spec.hidden_size, spec.hidden_size),
    ]
    states: list[np.ndarray] = []
    for name, value in (("h0", h0), ("c0", c0)):
        try:
            states.append(np.ascontiguousarray(to_array(value, ("body", name), state_dims, fast).transpose(1, 0, 2)))
        except InvalidInput as e:
            errors.extend(e.errors)
    if errors:
        raise InvalidInput(errors)
    return PredictCall(Batch(x, states[0], states[1], lengths), explain)


def encode_predict(
    results: list[SequenceResult], spec: ModelSpec, explanations: list[dict[str, np.ndarray]] | None = None
) -> bytes:
    answer: dict[str, Any] = {
        "outputs": [r.outputs for r in results],
        "hn": [r.hn for r in results],
        "cn": [r.cn for r in results],
        "model": {"name": spec.name, "version": spec.version},
    }
    if explanations is not None:
        answer["explanation"] = explanations
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
