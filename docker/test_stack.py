"""Checks of the running compose stack, from outside the container (run by docker/test.sh).

LSTM_URL names the service; the model file is the one the stack serves (./models mounted read-only).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from training.data import load_csv

ROOT = Path(__file__).resolve().parent.parent
URL = os.environ.get("LSTM_URL", "http://127.0.0.1:8000")


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(base_url=URL, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def info(http: httpx.Client) -> dict:
    answer = http.get("/model")
    assert answer.status_code == 200
    return answer.json()


@pytest.fixture(scope="module")
def rows(info: dict) -> np.ndarray:
    return load_csv(ROOT / "data" / "seattle-weather.csv", info["feature_names"], info["horizons"]["targets"]).features


def test_ready_and_names_the_provider(http: httpx.Client, info: dict) -> None:
    assert http.get("/health/ready").json() == {"status": "ready"}
    assert info["provider"] in info["providers"]
    assert info["provider"] == "CPUExecutionProvider" and info["device"] == "cpu"  # no GPU on this host


def test_predict_equals_onnx_runtime_in_process(http: httpx.Client, info: dict, rows: np.ndarray) -> None:
    folder = ROOT / "models" / info["name"] / info["version"]
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    lengths = [50, 7, 1, 33]
    x = np.zeros((4, 50, info["input_size"]), dtype=np.float32)
    for i, (start, n) in enumerate(zip([0, 400, 900, 1200], lengths, strict=True)):
        x[i, :n] = rows[start : start + n]
    zeros = np.zeros((info["num_layers"], 4, info["hidden_size"]), dtype=np.float32)
    y, hn, cn = sess.run(None, {"x": x, "h0": zeros, "c0": zeros, "lengths": np.array(lengths, dtype=np.int32)})
    answer = http.post("/predict", json={"inputs": [x[i, :n].tolist() for i, n in enumerate(lengths)]}).json()
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(answer["outputs"][i], y[i, :n], rtol=0, atol=1e-5)
    np.testing.assert_allclose(answer["hn"], hn.transpose(1, 0, 2), rtol=0, atol=1e-5)
    np.testing.assert_allclose(answer["cn"], cn.transpose(1, 0, 2), rtol=0, atol=1e-5)


def test_stream_in_chunks_equals_one_call(http: httpx.Client, rows: np.ndarray) -> None:
    seq = rows[100:400].tolist()
    whole = http.post("/predict", json={"inputs": [seq]}).json()
    outputs: list = []
    states: dict = {}
    for start in range(0, len(seq), 25):
        part = http.post("/predict", json={"inputs": [seq[start : start + 25]], **states}).json()
        outputs += part["outputs"][0]
        states = {"h0": part["hn"], "c0": part["cn"]}
    np.testing.assert_allclose(outputs, whole["outputs"][0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(states["h0"], whole["hn"], rtol=0, atol=1e-5)


def test_a_forecast_ahead_equals_the_last_steps_outputs(http: httpx.Client, info: dict, rows: np.ndarray) -> None:
    series = {"type": "multivariate_time_series", "name": "s", "series": rows[:40].tolist(), "frequency": "D"}
    body = {"model": info["name"], "inputs": [series], "options": {"horizon": 3, "quantiles": [0.1, 0.9]}}
    answer = http.post("/v1/timeseries/forecast", json=body)
    assert answer.status_code == 200, answer.text
    (content,) = answer.json()["outputs"][0]["content"]
    last = http.post("/predict", json={"inputs": [rows[:40].tolist()]}).json()["outputs"][0][-1]
    np.testing.assert_allclose(content["mean_forecast"], last[:3], rtol=0, atol=1e-5)
    low, high = np.array(content["quantiles"]["0.1"]), np.array(content["quantiles"]["0.9"])
    assert (low < np.array(content["mean_forecast"])).all() and (np.array(content["mean_forecast"]) < high).all()


def test_bad_input_is_422_and_the_service_goes_on(http: httpx.Client) -> None:
    answer = http.post("/predict", json={"inputs": [[]]})
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "inputs", 0]
    assert http.get("/health/ready").status_code == 200


def test_a_sequence_in_the_shared_store_survives_a_restart(http: httpx.Client, rows: np.ndarray) -> None:
    """Run twice by docker/test.sh, with the service on the compose Valkey: ``start`` sends the first chunks of
    a server-held sequence; the service is restarted; ``finish`` sends the rest, and the whole equals one call."""
    phase = os.environ["LSTM_STACK_SEQUENCE"]
    x = rows[100:160].tolist()
    first, rest = x[:25], x[25:]
    if phase == "start":
        http.post("/predict", json={"inputs": [x[:1]], "sequence": {"id": "stack", "end": True}})  # a leftover ends
        answer = http.post("/predict", json={"inputs": [first], "sequence": {"id": "stack", "start": True}})
        assert answer.status_code == 200, answer.text
        return
    answer = http.post("/predict", json={"inputs": [rest], "sequence": {"id": "stack", "end": True}})
    assert answer.status_code == 200, answer.text  # the states were in the store, not in the restarted service
    whole = http.post("/predict", json={"inputs": [x]}).json()["outputs"][0]
    np.testing.assert_allclose(answer.json()["outputs"][0], whole[25:], rtol=0, atol=1e-5)
