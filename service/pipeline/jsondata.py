"""Numbers out of JSON, for every protocol that carries them as JSON: one reader, two speeds.

The fast reader parses with simdjson and copies each number array straight from its tape into
numpy (``as_buffer``): no Python object per value, so a 16 MB body costs tens of megabytes, not
hundreds, and a fraction of the time. simdjson refuses booleans, strings and nulls there by
itself. Every shape is checked (each sequence's steps, each step's values), and the body must
hold exactly the arrays those shapes account for, so a nested or misplaced array cannot pass
unseen (a ``[`` inside a string only sends the body down the exact path).

Anything the fast reader does not take whole (a wrong count, a non-number, an integer beyond
64 bits, a syntax error) sends the body to the exact reader: orjson and a walk
over Python values that names every place at fault. The exact reader decides and words every
error; the fast one only ever accepts what the exact one would.
"""

from __future__ import annotations

import gc
import json
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar, cast

import numpy as np
import orjson
import simdjson

from . import memory, rules
from .errors import InvalidInput, Loc, error
from .rules import Dim

T = TypeVar("T")
_LISTS = (list, simdjson.Array)


class NotFast(Exception):
    """The fast reader cannot take this body whole: decode it again with the exact reader."""


def decode(body: bytes, read: Callable[[Reader], T], loc: Loc = ("body",)) -> T:
    """``read`` with the fast reader, and again with the exact one if the fast one gives up."""
    try:
        reader = Reader(body, exact=False, loc=loc)
        result = read(reader)
        reader.finish()
        return result
    except InvalidInput:  # refused by a rule on whole arrays or counts: the wording is final
        raise
    except (NotFast, KeyError, IndexError, TypeError, ValueError, RuntimeError):  # RecursionError included
        pass
    # Whatever the fast reader stumbles on, the exact one decides, and words the error. It builds a
    # Python object per value: large bodies take turns, and their memory goes back at once.
    try:
        if len(body) <= memory.LARGE_BODY_BYTES:  # exact decodes of larger bodies run one at a time
            return read(Reader(body, exact=True, loc=loc))
        with _LARGE_EXACT:
            try:
                return read(Reader(body, exact=True, loc=loc))
            finally:
                gc.collect()
    except RecursionError:
        raise InvalidInput([error(loc, "JSON nested too deep to read", "json_invalid")]) from None


MAX_KEYS = 64  # an object with more keys than any request needs goes to the exact reader (simdjson looks keys up
# one by one: many keys would cost their square)
_LARGE_EXACT = threading.Semaphore(1)


def keys(obj: Any, loc: Loc = ()) -> list[str]:
    """An object's keys, each once: a repeated key is refused (readers disagree on which one counts)."""
    names = list(obj.keys())
    if isinstance(obj, simdjson.Object) and len(names) > MAX_KEYS:
        raise NotFast
    if len(set(names)) != len(names):
        twice = next(k for i, k in enumerate(names) if k in names[:i])
        raise InvalidInput([error((*loc, key_name(twice)), "Each key may appear once", "duplicate_key")])
    return names


def _unique_keys(value: Any) -> None:
    """Every object within ``value`` (a simdjson proxy) has each key once."""
    if isinstance(value, simdjson.Object):
        for k in keys(value):
            _unique_keys(value[k])
    elif isinstance(value, simdjson.Array):
        for item in value:
            _unique_keys(item)


def key_name(name: str) -> str:
    """A key as an error names it: at most 64 characters, and anything UTF-8 cannot carry (a lone
    surrogate, which Python's own JSON parser lets through) escaped."""
    name = name if len(name) <= 64 else name[:61] + "..."
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def is_list(value: Any) -> bool:
    return isinstance(value, _LISTS)


def is_object(value: Any) -> bool:
    return isinstance(value, (dict, simdjson.Object))


class Reader:
    """One body's document, and its number arrays as validated numpy arrays."""

    def __init__(self, body: bytes, exact: bool, loc: Loc = ("body",)) -> None:
        self.body, self.exact, self.loc = body, exact, loc
        self.arrays = 0  # arrays the fast reader has accounted for
        self.document: Any = _exact_document(body, loc) if exact else _fast_document(body)

    def finish(self) -> None:
        """Every array of the body is one the shapes accounted for (fast reader only)."""
        if not self.exact and self.body.count(b"[") != self.arrays:
            raise NotFast

    def plain(self, value: Any) -> Any:
        """A small value (an envelope, parameters) as plain Python."""
        if isinstance(value, simdjson.Object):
            _unique_keys(value)
            value = value.as_dict()
        elif isinstance(value, simdjson.Array):
            _unique_keys(value)
            value = value.as_list()
        else:
            return value
        self.arrays += _lists_in(value)
        return value

    def array(self, obj: Any, loc: Loc, dims: Sequence[Dim]) -> np.ndarray:
        """A float32 array of shape ``dims`` (each axis within its counts) from nested JSON lists."""
        if self.exact:
            return _exact_array(obj, loc, dims)
        try:
            n = len(obj)
            if not dims[0].min <= n <= dims[0].max:
                raise NotFast
            shape, level, arrays = [n], [obj], 1
            for dim in dims[1:]:
                level = [item for parent in level for item in parent]
                arrays += len(level)
                n = len(level[0]) if level else 0
                if not dim.min <= n <= dim.max or any(len(item) != n for item in level):
                    raise NotFast
                shape.append(n)
            flat = _buffer(obj, "d")
        except (TypeError, ValueError, RuntimeError, KeyError):
            raise NotFast from None
        if flat.size != math.prod(shape):
            raise NotFast
        self.arrays += arrays
        return rules.finite_float32(flat.reshape(shape), loc)

    def sequences(self, obj: Any, loc: Loc, dims: Sequence[Dim]) -> list[np.ndarray]:
        """Sequences ``[sequence][step][value]`` that may differ in length."""
        if self.exact:
            return _exact_sequences(obj, loc, dims)
        seqs, steps, values = dims
        if not isinstance(obj, simdjson.Array):
            raise NotFast
        obj = cast(Any, obj)  # simdjson's stubs type items as any JSON value
        try:
            lengths = [len(seq) for seq in obj]
        except TypeError:  # a sequence that is no list
            raise NotFast from None
        if count := seqs.count_error(len(lengths), loc):
            raise InvalidInput([count])  # worded as the exact reader words it, without its cost
        width = values.max
        try:
            if not steps.min <= min(lengths) <= max(lengths) <= steps.max:
                raise TypeError("a sequence of too many or too few steps")
            flat = _buffer(obj, "d")
            for seq in obj:
                for step in seq:
                    if len(step) != width:
                        raise TypeError("a step of another size")
        except (TypeError, ValueError, RuntimeError, KeyError):
            self._faults(obj, loc, dims)  # the faulty sequences alone, read exactly: they name the places
            raise NotFast from None
        total = sum(lengths)
        if flat.size != total * values.max:
            raise NotFast
        self.arrays += 1 + len(lengths) + total
        try:
            x = rules.finite_float32(flat.reshape(total, values.max), loc)
        except InvalidInput as e:  # name the sequence and step, not the row of all steps
            row, value = e.errors[0]["loc"][-2:]
            seq = int(np.searchsorted(np.cumsum(lengths), row, side="right"))
            e.errors[0]["loc"] = [*loc, seq, row - sum(lengths[:seq]), value]
            raise
        if len(set(lengths)) == 1:
            return list(x.reshape(len(lengths), lengths[0], values.max))
        return np.split(x, np.cumsum(lengths[:-1]))

    @staticmethod
    def _faults(obj: Any, loc: Loc, dims: Sequence[Dim]) -> None:
        """Raise what the exact reader would say of these sequences, converting only the faulty ones to
        Python; return if that is not possible here (the exact reader then takes the whole body)."""
        errors: list[dict[str, Any]] = []
        for i, seq in enumerate(obj):
            try:
                ok = isinstance(seq, simdjson.Array) and dims[1].min <= len(seq) <= dims[1].max
                ok = ok and all(len(step) == dims[2].max for step in seq)
                with np.errstate(over="ignore"):  # past float32's range: inf, a fault
                    ok = ok and bool(np.isfinite(_buffer(seq, "d").astype(np.float32)).all())
            except (TypeError, ValueError, RuntimeError, KeyError):
                ok = False
            if ok:
                continue
            try:
                plain = seq.as_list() if isinstance(seq, simdjson.Array) else seq
                _exact_array(plain, (*loc, i), dims[1:])
            except InvalidInput as e:
                errors.extend(e.errors)
            except (TypeError, ValueError, RuntimeError):
                return  # beyond what simdjson converts (a big integer): the exact reader takes the body
            if len(errors) >= rules.MAX_ERRORS:
                break
        if errors:
            raise InvalidInput(errors[: rules.MAX_ERRORS])

    def tensor_data(self, data: Any, loc: Loc, dtype: np.dtype[Any], shape: Sequence[int]) -> np.ndarray:
        """Tensor data of ``shape``, flat (row-major) or nested exactly as the shape, as ``dtype``: numbers
        only; an integer type takes integers within its range, never a float or a wrapped value."""
        if not is_list(data):
            raise InvalidInput([error(loc, "Input should be a list of numbers", "list_type")])
        count = math.prod(shape)
        if self.exact:
            return rules.tensor_values(_exact_values(data, loc, shape), loc, dtype).reshape(shape)
        try:
            if len(data) and isinstance(data[0], simdjson.Array):  # nested: every level as the shape says
                level = [data]
                for k, n in enumerate(shape):
                    if any(len(item) != n for item in level):
                        raise NotFast
                    if k < len(shape) - 1:
                        level = [child for item in level for child in item]
                arrays = sum(math.prod(shape[:k]) for k in range(len(shape)))
            else:
                if len(data) != count:
                    raise NotFast
                arrays = 1
            raw = _buffer(data, "i" if dtype.kind == "i" else "d")
        except (TypeError, ValueError, RuntimeError, KeyError):
            raise NotFast from None
        if raw.size != count:
            raise NotFast
        self.arrays += arrays
        return rules.tensor_values(raw, loc, dtype).reshape(shape)


def _lists_in(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(_lists_in(v) for v in value)
    if isinstance(value, dict):
        return sum(_lists_in(v) for v in value.values())
    return 0


def _exact_values(data: list[Any], loc: Loc, shape: Sequence[int]) -> list[Any]:
    """Flat values of tensor data given flat, or nested exactly as ``shape``; else the places at fault."""
    count = math.prod(shape)
    if not any(isinstance(v, list) for v in data):
        if len(data) != count:
            msg = f"{len(data)} values for shape {list(shape)} ({count} values)"
            raise InvalidInput([error(loc, msg, "shape")])
        return data
    errors: list[dict[str, Any]] = []
    _walk(data, loc, [Dim("item", n, n) for n in shape], errors)
    if errors:
        raise InvalidInput(errors)
    return _flatten(data)


def _buffer(arr: Any, of_type: Literal["d", "i"]) -> np.ndarray:
    if not isinstance(arr, simdjson.Array):
        raise TypeError("not an array")
    return np.frombuffer(arr.as_buffer(of_type=of_type), dtype=np.float64 if of_type == "d" else np.int64)


def _fast_document(body: bytes) -> Any:
    try:
        return simdjson.Parser().parse(body)
    except (ValueError, RuntimeError):  # a syntax error or a number simdjson does not take: orjson names it
        raise NotFast from None


def document(body: bytes, loc: Loc = ()) -> Any:
    """A whole small body as plain Python, read as the exact reader reads it: a key given twice, NaN or
    Infinity refused, an error's place in it named."""
    return _exact_document(body, loc)


def _exact_document(body: bytes, loc: Loc) -> Any:
    if body.count(b":") > 1:  # objects with keys: refuse a key given twice, which orjson keeps silently
        try:
            # Keys only: numbers are read as None, so this pass holds no Python float; it runs first, apart from
            # the parse below, so the two never hold memory together.
            json.loads(
                body,
                object_pairs_hook=lambda pairs: _once(pairs, loc),
                parse_float=_nothing,
                parse_int=_nothing,
                parse_constant=_nothing,
            )
        except InvalidInput:
            raise
        except (ValueError, RecursionError):  # not JSON to the standard parser, or nested too deep: orjson words it
            pass
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        msg = f"JSON decode error at byte {e.pos}: {e.msg}"
        raise InvalidInput([error((*loc, e.pos), msg, "json_invalid", error=e.msg)]) from None


def _nothing(text: str) -> None:
    return None


def _once(pairs: list[tuple[str, Any]], loc: Loc) -> None:
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            raise InvalidInput([error((*loc, key_name(k)), "Each key may appear once", "duplicate_key")])
        seen.add(k)


def _walk(obj: Any, loc: Loc, dims: Sequence[Dim], errors: list[dict[str, Any]]) -> None:
    """Append the errors of a nested array, depth first, stopping at MAX_ERRORS."""
    if len(errors) >= rules.MAX_ERRORS:
        return
    if not dims:
        if rules.not_a_number(obj):
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


def _exact_array(obj: Any, loc: Loc, dims: Sequence[Dim]) -> np.ndarray:
    errors: list[dict[str, Any]] = []
    _walk(obj, loc, dims, errors)
    if errors:
        raise InvalidInput(errors)
    with np.errstate(over="ignore"):  # integers past int64 are exact in float64; past float32, inf (refused)
        return rules.finite_float32(np.array(obj, dtype=np.float64), loc)


def _exact_sequences(obj: Any, loc: Loc, dims: Sequence[Dim]) -> list[np.ndarray]:
    if not isinstance(obj, list):
        raise InvalidInput([error(loc, "Input should be a list of sequences", "list_type")])
    count = dims[0].count_error(len(obj), loc)
    if count:
        raise InvalidInput([count])
    seqs: list[np.ndarray] = []
    errors: list[dict[str, Any]] = []
    for i, seq in enumerate(obj):
        try:
            seqs.append(_exact_array(seq, (*loc, i), dims[1:]))
        except InvalidInput as e:
            errors.extend(e.errors)
            if len(errors) >= rules.MAX_ERRORS:
                break
    if errors:
        raise InvalidInput(errors[: rules.MAX_ERRORS])
    return seqs


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
