"""The HTTP contract of /predict, /model, the health routes and the docs, through TestClient."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

from .conftest import windows


def predict(client: TestClient, seqs: list, h0: object = None, c0: object = None) -> dict:
    body: dict = {"inputs": [np.asarray(s).tolist() for s in seqs]}
    if h0 is not None:
        body["h0"], body["c0"] = h0, c0
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_answer_shapes_and_model(client: TestClient, weather: np.ndarray, rng: np.random.Generator) -> None:
    out = predict(client, windows(weather, [4, 2], rng))
    assert [len(o) for o in out["outputs"]] == [4, 2]
    assert all(len(step) == 1 for o in out["outputs"] for step in o)
    assert np.asarray(out["hn"]).shape == (2, 2, 8) and np.asarray(out["cn"]).shape == (2, 2, 8)
    assert out["model"] == {"name": "tiny", "version": "1"}


def test_absent_states_equal_zero_states(client: TestClient, weather: np.ndarray, rng: np.random.Generator) -> None:
    seqs = windows(weather, [6], rng)
    zeros = np.zeros((1, 2, 8)).tolist()
    assert predict(client, seqs) == predict(client, seqs, zeros, zeros)


def test_states_change_the_answer(client: TestClient, weather: np.ndarray, rng: np.random.Generator) -> None:
    seqs = windows(weather, [6], rng)
    ones = np.full((1, 2, 8), 0.5).tolist()
    assert predict(client, seqs)["outputs"] != predict(client, seqs, ones, ones)["outputs"]


def test_each_sequence_of_a_mixed_batch_gets_what_it_gets_alone(
    client: TestClient, weather: np.ndarray, rng: np.random.Generator
) -> None:
    lengths = [30, 1, 7, 30, 2, 15]
    seqs = windows(weather, lengths, rng)
    h0 = rng.standard_normal((6, 2, 8)) * 0.3
    c0 = rng.standard_normal((6, 2, 8)) * 0.3
    mixed = predict(client, seqs, h0.tolist(), c0.tolist())
    for i, seq in enumerate(seqs):
        alone = predict(client, [seq], h0[i : i + 1].tolist(), c0[i : i + 1].tolist())
        assert len(mixed["outputs"][i]) == lengths[i]  # exactly its own steps, no padding
        np.testing.assert_allclose(mixed["outputs"][i], alone["outputs"][0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(mixed["hn"][i], alone["hn"][0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(mixed["cn"][i], alone["cn"][0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 100])
def test_streaming_in_chunks_equals_one_whole_call(client: TestClient, weather: np.ndarray, chunk: int) -> None:
    seq = weather[300:800]  # 500 real steps
    whole = predict(client, [seq])
    outputs: list = []
    h0 = c0 = None
    for start in range(0, len(seq), chunk):
        part = predict(client, [seq[start : start + chunk]], h0, c0)
        outputs.extend(part["outputs"][0])
        h0, c0 = part["hn"], part["cn"]  # passed back unchanged
    assert len(outputs) == 500
    np.testing.assert_allclose(outputs, whole["outputs"][0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(h0, whole["hn"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(c0, whole["cn"], rtol=0, atol=1e-5)


BAD_BODIES = {
    "wrong feature count": ({"inputs": [[[1, 2, 3]]]}, ["body", "inputs", 0, 0]),
    "ragged steps": ({"inputs": [[[1, 2, 3, 4], [1, 2, 3]]]}, ["body", "inputs", 0, 1]),
    "empty batch": ({"inputs": []}, ["body", "inputs"]),
    "empty sequence": ({"inputs": [[[1, 2, 3, 4]], []]}, ["body", "inputs", 1]),
    "string value": ({"inputs": [[[1, 2, "3", 4]]]}, ["body", "inputs", 0, 0, 2]),
    "states of the wrong shape": (
        {"inputs": [[[1, 2, 3, 4]]], "h0": [[[0] * 8]], "c0": [[[0] * 8]]},
        ["body", "h0", 0],
    ),
    "only h0": ({"inputs": [[[1, 2, 3, 4]]], "h0": [[[0] * 8] * 2]}, ["body", "c0"]),
    "only c0": ({"inputs": [[[1, 2, 3, 4]]], "c0": [[[0] * 8] * 2]}, ["body", "h0"]),
    "too many sequences": ({"inputs": [[[1, 2, 3, 4]]] * 17}, ["body", "inputs"]),
    "too many steps": ({"inputs": [[[1, 2, 3, 4]] * 601]}, ["body", "inputs", 0]),
    "huge value": ({"inputs": [[[1, 2, 3, 4], [1, 2, 1e39, 4]]]}, ["body", "inputs", 0, 1, 2]),
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_bad_input_is_a_clear_422_and_the_server_still_answers(client: TestClient, name: str) -> None:
    body, loc = BAD_BODIES[name]
    r = client.post("/predict", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail[0]["loc"] == loc and detail[0]["msg"] and detail[0]["type"]
    assert client.post("/predict", json={"inputs": [[[0.0, 10.0, 5.0, 3.0]]]}).status_code == 200


@pytest.mark.parametrize("raw", [b'{"inputs": [[[1, 2, NaN, 4]]]}', b'{"inputs": [[[1, 2, Infinity, 4]]]}', b"{nope"])
def test_nan_infinity_and_broken_json_are_422(client: TestClient, raw: bytes) -> None:
    r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"


def test_body_over_the_limit_is_413(client: TestClient, settings: Settings) -> None:
    big = b'{"inputs": [[' + b",".join([b"[1.0, 2.0, 3.0, 4.0]"] * 20000) + b"]]}"
    assert len(big) > settings.max_body_bytes
    r = client.post("/predict", content=big)
    assert r.status_code == 413
    assert r.json()["detail"][0]["loc"] == ["body"] and str(settings.max_body_bytes) in r.json()["detail"][0]["msg"]


def test_streamed_body_over_the_limit_is_413(client: TestClient, settings: Settings) -> None:
    """No Content-Length to trust: the limit holds while the body streams in."""

    def chunks():
        yield b'{"inputs": [['
        for _ in range(400):
            yield b"[1.0, 2.0, 3.0, 4.0]," * 50
        yield b"[1,2,3,4]]]}"

    r = client.post("/predict", content=chunks())
    assert r.status_code == 413


def test_model_route(client: TestClient, settings: Settings) -> None:
    info = client.get("/model").json()
    assert (info["name"], info["version"]) == ("tiny", "1")
    assert (info["input_size"], info["output_size"], info["hidden_size"], info["num_layers"]) == (4, 1, 8, 2)
    assert info["feature_names"] == ["precipitation", "temp_max", "temp_min", "wind"]
    assert info["target_names"] == ["temp_max"]
    assert info["provider"] == "CPUExecutionProvider" and info["device"] == "cpu"
    assert info["limits"] == {
        "max_batch_size": settings.max_batch_size,
        "max_steps": settings.max_steps,
        "max_body_bytes": settings.max_body_bytes,
        "explain_max_values": settings.explain_max_values,
    }


def test_health(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    r = client.get("/health/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready"}


def test_not_ready_before_the_lifespan_has_loaded_the_model(settings: Settings) -> None:
    client = TestClient(create_app(settings))  # not entered: no lifespan ran
    assert client.get("/health/live").status_code == 200
    assert client.get("/health/ready").status_code == 503
    assert client.post("/predict", json={"inputs": [[[1, 2, 3, 4]]]}).status_code == 503


def test_docs_example_is_a_working_request(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["inputs"]
    r = client.post("/predict", json=body["example"])
    assert r.status_code == 200 and len(r.json()["outputs"][0]) == len(body["example"]["inputs"][0])


def test_docs_can_be_switched_off(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"docs": False}))) as c:
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 404
