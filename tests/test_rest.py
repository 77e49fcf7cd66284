"""The /predict codec (service.protocols.rest): valid bodies become the right arrays; each malformed
one names its place."""

import numpy as np
import orjson
import pytest

from service.model.contract import ModelSpec
from service.pipeline.errors import InvalidInput
from service.pipeline.rules import Limits
from service.protocols.rest import CODEC
from service.settings import Settings

decode_predict = CODEC.decode

SPEC = ModelSpec("m", "1", 3, 1, 2, 2, ["a", "b", "c"], ["a"], metadata={})
# explain_max_values: 6 steps of 2 layers x 2 units
LIMITS = Limits.from_settings(
    Settings(max_batch_size=4, max_steps=5, explain_max_values=2 * 2 * 6, max_total_values=100, max_body_bytes=1 << 20)
)
STEP = [1.0, 2.0, 3.0]
STATE = [[0.1, 0.2], [0.3, 0.4]]  # [layer][unit]


def decode(doc: object):
    return decode_predict(orjson.dumps(doc), SPEC, LIMITS).batch


def first_error(doc: object, raw: bytes | None = None) -> dict:
    with pytest.raises(InvalidInput) as e:
        decode_predict(raw if raw is not None else orjson.dumps(doc), SPEC, LIMITS)
    return e.value.errors[0]


def test_equal_lengths() -> None:
    b = decode({"inputs": [[STEP, STEP], [STEP, [4, 5, 6]]]})
    assert b.padded().shape == (2, 2, 3) and b.x[0].dtype == np.float32
    assert b.lengths.tolist() == [2, 2]
    assert b.padded()[1, 1].tolist() == [4, 5, 6]
    assert b.h0.shape == (2, 2, 2) and not b.h0.any() and not b.c0.any()


def test_mixed_lengths_are_padded_with_lengths() -> None:
    b = decode({"inputs": [[STEP], [STEP, STEP, [7, 8, 9]]]})
    assert b.padded().shape == (2, 3, 3) and b.lengths.tolist() == [1, 3]
    assert b.padded()[1, 2].tolist() == [7, 8, 9] and not b.padded()[0, 1:].any()


def test_states_are_transposed_to_layer_major() -> None:
    h0 = [STATE, [[1, 2], [3, 4]]]
    b = decode({"inputs": [[STEP], [STEP]], "h0": h0, "c0": h0})
    assert b.h0.shape == (2, 2, 2)  # [L, B, H]
    assert b.h0[:, 1].tolist() == [[1, 2], [3, 4]] and b.h0.flags.c_contiguous


def test_integers_and_huge_integers_are_numbers() -> None:
    b = decode({"inputs": [[[1, 2, 2**64 - 1]]]})
    assert b.padded()[0, 0, 2] == np.float32(2**64 - 1)


@pytest.mark.parametrize(
    ("doc", "loc", "type_", "text"),
    [
        ([1, 2], ["body"], "model_attributes_type", "JSON object"),
        ({}, ["body", "inputs"], "missing", "Field required"),
        ({"inputs": [[STEP]], "extra": 1}, ["body", "extra"], "extra_forbidden", "Extra inputs"),
        ({"inputs": "x"}, ["body", "inputs"], "list_type", "list of sequences"),
        ({"inputs": []}, ["body", "inputs"], "too_short", "at least 1 sequence"),
        ({"inputs": [[STEP]] * 5}, ["body", "inputs"], "too_long", "at most 4 sequences"),
        ({"inputs": [[STEP], []]}, ["body", "inputs", 1], "too_short", "at least 1 step"),
        ({"inputs": [[STEP], [STEP] * 6]}, ["body", "inputs", 1], "too_long", "at most 5 steps"),
        ({"inputs": [[STEP, [1.0, 2.0]]]}, ["body", "inputs", 0, 1], "too_short", "exactly 3 values (a, b, c), not 2"),
        ({"inputs": [[STEP], [STEP, [1, 2, 3, 4]]]}, ["body", "inputs", 1, 1], "too_long", "exactly 3 values"),
        ({"inputs": [[STEP, [1.0, "2", 3.0]]]}, ["body", "inputs", 0, 1, 1], "float_type", "valid number"),
        ({"inputs": [[STEP, [1.0, None, 3.0]]]}, ["body", "inputs", 0, 1, 1], "float_type", "valid number"),
        ({"inputs": [[STEP, [1.0, True, 3.0]]]}, ["body", "inputs", 0, 1, 1], "float_type", "valid number"),
        ({"inputs": [[STEP, [1.0, [2.0], 3.0]]]}, ["body", "inputs", 0, 1, 1], "float_type", "valid number"),
        ({"inputs": [[STEP, 5]]}, ["body", "inputs", 0, 1], "list_type", "list of values"),
        ({"inputs": [[STEP], [STEP, [1.0, 1e39, 3.0]]]}, ["body", "inputs", 1, 1, 1], "finite_number", "finite"),
        ({"inputs": [[STEP]], "h0": [STATE]}, ["body", "c0"], "missing", "both or neither"),
        ({"inputs": [[STEP]], "c0": [STATE]}, ["body", "h0"], "missing", "both or neither"),
        ({"inputs": [[STEP], [STEP]], "h0": [STATE], "c0": [STATE]}, ["body", "h0"], "too_short", "2 sequences"),
        ({"inputs": [[STEP]], "h0": [[[0.1, 0.2]]], "c0": [STATE]}, ["body", "h0", 0], "too_short", "2 layers"),
        ({"inputs": [[STEP]], "h0": [STATE], "c0": [[[1, 2], [3]]]}, ["body", "c0", 0, 1], "too_short", "2 units"),
        (
            {"inputs": [[STEP]], "h0": [STATE], "c0": [[[1, 2], [3, 1e40]]]},
            ["body", "c0", 0, 1, 1],
            "finite_number",
            "",
        ),
        ({"inputs": [[STEP]], "explain": 1}, ["body", "explain"], "bool_type", "boolean"),
        ({"inputs": [[STEP]], "explain": None}, ["body", "explain"], "bool_type", "boolean"),
        ({"inputs": [[STEP] * 4, [STEP] * 3], "explain": True}, ["body", "explain"], "too_long", "7 steps x 2 layers"),
        ({"inputs": [[STEP, [1.0, False, 3.0]]], "explain": True}, ["body", "inputs", 0, 1, 1], "float_type", "number"),
    ],
)
def test_bad_input_names_the_place(doc: object, loc: list, type_: str, text: str) -> None:
    err = first_error(doc)
    assert err["loc"] == loc and err["type"] == type_ and text in err["msg"]


@pytest.mark.parametrize(
    "raw", [b"", b"{", b'{"inputs": [[[1, 2, NaN]]]}', b'{"inputs": [[[1, 2, Infinity]]]}', b"[1e400]"]
)
def test_invalid_json_nan_and_infinity(raw: bytes) -> None:
    err = first_error(None, raw)
    assert err["type"] == "json_invalid" and err["loc"][0] == "body" and isinstance(err["loc"][1], int)


def test_several_faults_are_all_named() -> None:
    with pytest.raises(InvalidInput) as e:
        decode({"inputs": [[STEP, [1, 2]], [], [STEP, [1, "x", 3]]]})
    assert [x["loc"] for x in e.value.errors] == [
        ["body", "inputs", 0, 1],
        ["body", "inputs", 1],
        ["body", "inputs", 2, 1, 1],
    ]


def test_explain_flag_and_its_limit() -> None:
    for flag in (True, False):
        call = decode_predict(orjson.dumps({"inputs": [[STEP] * 3, [STEP] * 3], "explain": flag}), SPEC, LIMITS)
        assert call.explain is flag and call.batch.lengths.tolist() == [3, 3]
    assert decode_predict(orjson.dumps({"inputs": [[STEP]]}), SPEC, LIMITS).explain is False
    # The limit is for explanations only: the same 7 steps without explain are fine.
    assert decode({"inputs": [[STEP] * 4, [STEP] * 3], "explain": False}).lengths.tolist() == [4, 3]


def test_a_key_given_twice_is_named_in_the_body() -> None:
    fast = b'{"inputs": [[[1, 2, 3]]], "h0": null, "h0": null}'
    exact = b'{"inputs": [[[1, 2, 100000000000000000000000]]], "inputs": 1}'  # a big integer: the exact reader
    assert first_error(None, fast) == {
        "loc": ["body", "h0"],
        "msg": "Each key may appear once",
        "type": "duplicate_key",
    }
    assert first_error(None, exact)["loc"] == ["body", "inputs"] and first_error(None, exact)["type"] == "duplicate_key"
