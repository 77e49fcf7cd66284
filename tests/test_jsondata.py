"""Numbers out of JSON (service.pipeline.jsondata): the fast reader takes valid bodies itself, and only
ever accepts what the exact reader accepts, with the same numbers."""

import json
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings

from service.model.contract import ModelSpec
from service.pipeline import jsondata
from service.pipeline.errors import InvalidInput
from service.pipeline.rules import Limits
from service.protocols.oip import OipCodec
from service.protocols.rest import RestCodec
from service.protocols.websocket import StreamCodec
from service.settings import Settings

SPEC = ModelSpec("m", "1", 3, 1, 2, 2, ["a", "b", "c"], ["a"], metadata={})
LIMITS = Limits.from_settings(
    Settings(max_batch_size=4, max_steps=5, explain_max_values=10_000, max_total_values=1000, max_body_bytes=1 << 20)
)
number = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-(10**6), 10**6)
odd = st.sampled_from([True, False, None, "1", [], [1.0], [[1.0]], {"a": 1}, 2**70, 1e39, "[", "]"])
value = number | odd
step = st.lists(value, min_size=2, max_size=4)
sequence = st.lists(step, min_size=0, max_size=4)
state = st.lists(st.lists(st.lists(value, min_size=1, max_size=3), min_size=1, max_size=3), min_size=1, max_size=3)


@st.composite
def rest_bodies(draw: st.DrawFn) -> bytes:
    doc: dict[str, Any] = {"inputs": draw(st.lists(sequence, min_size=0, max_size=4))}
    if draw(st.booleans()):
        doc["h0"], doc["c0"] = draw(state), draw(state)
    if draw(st.booleans()):
        doc["explain"] = draw(st.sampled_from([False, 1, "x"]))
    return json.dumps(doc).encode()


@st.composite
def ws_bodies(draw: st.DrawFn) -> bytes:
    doc: dict[str, Any] = {"stream": draw(st.sampled_from(["a", "b[", 5])), "inputs": draw(sequence)}
    if draw(st.booleans()):
        doc["h0"], doc["c0"] = draw(state)[0], draw(state)[0]
    return json.dumps(doc).encode()


@st.composite
def oip_bodies(draw: st.DrawFn) -> bytes:
    shape = draw(st.lists(st.integers(0, 3), min_size=3, max_size=3))
    flat = draw(st.lists(value, min_size=0, max_size=12))
    data: Any = flat if draw(st.booleans()) else [flat[i : i + 2] for i in range(0, len(flat), 2)]
    tensor = {"name": "x", "shape": shape, "datatype": draw(st.sampled_from(["FP32", "INT32"])), "data": data}
    return json.dumps({"id": draw(st.sampled_from(["r", "[r]"])), "inputs": [tensor]}).encode()


def outcome(codec: Any, body: bytes, exact: bool) -> Any:
    """What the codec decodes with one reader alone: the batch's arrays, or the exception's type."""
    try:
        reader = jsondata.Reader(body, exact=exact, loc=("body",))
        call = (
            codec._read(reader, SPEC, LIMITS)
            if not isinstance(codec, OipCodec)
            else codec._read(reader, b"", SPEC, LIMITS)
        )
        if not exact:
            reader.finish()
    except (jsondata.NotFast, InvalidInput, KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        return type(e)
    return [*call.batch.x, call.batch.h0, call.batch.c0]


def same_when_fast(codec: Any, body: bytes) -> None:
    fast = outcome(codec, body, exact=False)
    if isinstance(fast, type):  # the fast reader gave up or refused: the exact one decides
        return
    exact = outcome(codec, body, exact=True)
    assert not isinstance(exact, type), f"the fast reader took what the exact one refuses ({exact.__name__}): {body!r}"
    assert len(fast) == len(exact)
    for a, b in zip(fast, exact, strict=True):
        np.testing.assert_array_equal(a, b)


@given(rest_bodies())
@hypothesis_settings(max_examples=300, deadline=None)
def test_rest_fast_reader_accepts_only_what_the_exact_one_does(body: bytes) -> None:
    same_when_fast(RestCodec(), body)


@given(ws_bodies())
@hypothesis_settings(max_examples=200, deadline=None)
def test_stream_fast_reader_accepts_only_what_the_exact_one_does(body: bytes) -> None:
    same_when_fast(StreamCodec(max_streams=4), body)


@given(oip_bodies())
@hypothesis_settings(max_examples=200, deadline=None)
def test_oip_fast_reader_accepts_only_what_the_exact_one_does(body: bytes) -> None:
    same_when_fast(OipCodec(None), body)


VALID = {
    "rest": (
        RestCodec(),
        b'{"inputs": [[[1, 2, 3], [4, 5, 6.5]], [[7, 8, 9]]], "h0": [[[0.1, 0.2], [0.3, 0.4]], '
        b'[[0, 0], [0, 0]]], "c0": [[[1, 1], [1, 1]], [[2, 2], [2, 2]]], "explain": false}',
    ),
    "websocket": (
        StreamCodec(4),
        b'{"stream": "s", "inputs": [[1, 2, 3]], "h0": [[1, 2], [3, 4]], "c0": [[0, 0], [0, 0]]}',
    ),
    "oip-flat": (
        OipCodec(None),
        b'{"inputs": [{"name": "x", "shape": [1, 2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}',
    ),
    "oip-nested": (
        OipCodec(None),
        b'{"inputs": [{"name": "x", "shape": [1, 2, 3], "datatype": "FP64", "data": [[[1, 2, 3], [4, 5, 6]]]},'
        b' {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [1]}], "outputs": [{"name": "y"}]}',
    ),
}


@pytest.mark.parametrize("name", VALID)
def test_valid_bodies_never_take_the_slow_path(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    codec, body = VALID[name]
    exact_call = codec.decode(body, SPEC, LIMITS)

    def no_exact(body: bytes, loc: Any) -> Any:
        raise AssertionError("the exact reader ran on a valid body")

    monkeypatch.setattr(jsondata, "_exact_document", no_exact)
    fast_call = codec.decode(body, SPEC, LIMITS)
    for a, b in zip(fast_call.batch.x, exact_call.batch.x, strict=True):
        np.testing.assert_array_equal(a, b)
