"""Property-based tests: schemathesis against the service's own OpenAPI schema, and hypothesis
against the validation. Bounded: a few seconds each."""

from typing import Any

import hypothesis.strategies as st
import numpy as np
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.model.contract import ModelSpec
from service.pipeline.errors import InvalidInput
from service.pipeline.rules import Limits
from service.protocols.rest import CODEC
from service.settings import Settings

from .conftest import app_client

decode_predict = CODEC.decode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.mark.parametrize("fast_path", [True, False])
def test_schemathesis_no_5xx_and_every_answer_matches_the_schema(settings: Settings, fast_path: bool) -> None:
    with app_client(settings, fast_path=fast_path) as c:  # the lifespan loads the model
        api = schemathesis.openapi.from_asgi("/openapi.json", c.app)
        operations = [result.ok() for result in api.get_all_operations()]
        assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
            "POST /predict",
            "GET /model",
            "POST /v2/models/{name}/infer",
            "POST /v2/models/{name}/versions/{version}/infer",
        }
        runs = [(op, GenerationMode.POSITIVE) for op in operations]
        runs += [(op, GenerationMode.NEGATIVE) for op in operations if op.method.upper() == "POST"]  # malformed bodies
        for operation, mode in runs:

            @given(case=operation.as_strategy(generation_mode=mode), served=st.booleans())
            @hypothesis_settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
            def call(case: Any, served: bool) -> None:
                if served and case.path_parameters:  # half the cases reach the served model's pipeline
                    case.path_parameters = {**case.path_parameters, "name": "tiny", "version": "1"}
                    case.path_parameters = {k: v for k, v in case.path_parameters.items() if f"{{{k}}}" in case.path}
                case.call_and_validate(checks=CHECKS)

            call()


# ---- hypothesis on the validation itself
SPEC = ModelSpec("m", "1", 3, 1, 4, 2, ["a", "b", "c"], ["a"], metadata={})
LIMITS = Limits.from_settings(
    Settings(max_batch_size=5, max_steps=7, explain_max_values=10_000, max_total_values=10**6, max_body_bytes=1 << 20)
)
number = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-(10**6), 10**6)
json_value = st.recursive(
    st.none() | st.booleans() | number | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=30,
)


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    batch = draw(st.integers(1, LIMITS.max_batch_size))
    lengths = draw(st.lists(st.integers(1, LIMITS.max_steps), min_size=batch, max_size=batch))
    body: dict[str, Any] = {"inputs": [[[draw(number) for _ in range(3)] for _ in range(n)] for n in lengths]}
    if draw(st.booleans()):
        for name in ("h0", "c0"):
            body[name] = [[[draw(number) for _ in range(4)] for _ in range(2)] for _ in range(batch)]
    return body


@given(valid_bodies())
@hypothesis_settings(max_examples=150, deadline=None)
def test_any_valid_body_decodes_to_the_right_shapes(body: dict[str, Any]) -> None:
    call = decode_predict(orjson.dumps(body), SPEC, LIMITS)
    lengths = [len(s) for s in body["inputs"]]
    assert call.batch.lengths.tolist() == lengths
    assert call.batch.padded().shape == (len(lengths), max(lengths), 3)
    assert call.batch.h0.shape == call.batch.c0.shape == (2, len(lengths), 4)
    for i, seq in enumerate(body["inputs"]):
        np.testing.assert_array_equal(call.batch.x[i], np.asarray(seq, dtype=np.float32))
    if "h0" in body:
        np.testing.assert_array_equal(call.batch.h0, np.asarray(body["h0"], dtype=np.float32).transpose(1, 0, 2))


@given(json_value)
@hypothesis_settings(max_examples=300, deadline=None)
def test_any_malformed_body_is_invalid_input_and_nothing_else(doc: Any) -> None:
    for body in (orjson.dumps(doc), orjson.dumps({"inputs": doc}), orjson.dumps({"inputs": [[[1, 2, 3]]], "h0": doc})):
        try:
            decode_predict(body, SPEC, LIMITS)
        except InvalidInput as e:
            assert e.errors and all(err["loc"][0] == "body" and err["msg"] and err["type"] for err in e.errors)


@given(valid_bodies(), st.data())
@hypothesis_settings(max_examples=100, deadline=None)
def test_one_corrupted_value_is_named_where_it_is(body: dict[str, Any], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(body["inputs"]) - 1))
    j = data.draw(st.integers(0, len(body["inputs"][i]) - 1))
    k = data.draw(st.integers(0, 2))
    body["inputs"][i][j][k] = data.draw(st.sampled_from(["1", None, True, [1.0], {"x": 1}, 1e39]))
    with pytest.raises(InvalidInput) as e:
        decode_predict(orjson.dumps(body), SPEC, LIMITS)
    assert e.value.errors[0]["loc"] == ["body", "inputs", i, j, k]
