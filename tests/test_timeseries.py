"""Forecasts ahead with intervals: KServe's time series API (POST /v1/timeseries/forecast) and /predict's
forecast option, on a tiny model of three horizons; both equal what the model's outputs and intervals say."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.model.engine import Engine
from service.model.errors import ModelLoadError
from service.settings import Settings
from training.export import export
from training.train import TrainConfig, train

from .conftest import DATA, TINY, app_client

URL = "/v1/timeseries/forecast"


@pytest.fixture(scope="module")
def ahead_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny/1 (one step, no intervals) beside ahead/1 (three horizons, with intervals)."""
    run = tmp_path_factory.mktemp("ahead-run")
    train(TrainConfig(data=str(DATA), out=str(run), horizons=3, **{**TINY, "max_epochs": 3, "plots": False}))
    one = tmp_path_factory.mktemp("one-run")
    train(TrainConfig(data=str(DATA), out=str(one), **{**TINY, "max_epochs": 1, "plots": False}))
    root = tmp_path_factory.mktemp("ahead-models")
    export(run / "checkpoint.pt", root, "ahead", 1)
    export(one / "checkpoint.pt", root, "tiny", 1)
    return root


@pytest.fixture(scope="module", params=[True, False], ids=["fast-path", "fastapi-route"])
def c(ahead_repo: Path, settings: Settings, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    overrides = {"model_repository": ahead_repo, "model_name": "ahead", "fast_path": request.param}
    with app_client(settings, **overrides) as client:
        yield client


def intervals(repo: Path) -> tuple[np.ndarray, np.ndarray]:
    meta = json.loads((repo / "ahead" / "1" / "metadata.json").read_text())
    return np.array(meta["intervals"]["levels"]), np.array(meta["intervals"]["quantiles"])


def series(rows: np.ndarray, name: str = "s", **extra: Any) -> dict[str, Any]:
    return {"type": "multivariate_time_series", "name": name, "series": rows.tolist(), "frequency": "D", **extra}


def test_a_forecast_is_the_last_steps_outputs_plus_the_residual_quantiles(
    c: TestClient, ahead_repo: Path, weather: np.ndarray
) -> None:
    a, b = weather[100:140], weather[500:507]
    body = {
        "model": "ahead",
        "inputs": [series(a, "a"), series(b, "b")],
        "options": {"horizon": 3, "quantiles": [0.1, 0.5, 0.975]},
    }
    r = c.post(URL, json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] == "completed" and answer["model"] == "ahead" and len(answer["outputs"]) == 2
    levels, residuals = intervals(ahead_repo)
    for rows, out in zip((a, b), answer["outputs"], strict=True):
        (content,) = out["content"]
        assert out["type"] == "time_series_forecast" and out["status"] == "completed"
        assert content["type"] == "univariate_time_series" and content["targets"] == ["temp_max"]
        last = c.post("/v1/models/ahead/predict", json={"inputs": [rows.tolist()]}).json()["outputs"][0][-1]
        np.testing.assert_allclose(content["mean_forecast"], last, rtol=0, atol=1e-5)  # output k: k steps ahead
        for q, values in content["quantiles"].items():
            shift = [np.interp(float(q), levels, residuals[k, :, 0]) for k in range(3)]
            np.testing.assert_allclose(values, np.array(last) + shift, rtol=0, atol=1e-4)
        low, mid, high = (np.array(content["quantiles"][q]) for q in ("0.1", "0.5", "0.975"))
        assert (low < high).all() and (low <= mid).all() and (mid <= high).all()


def test_predict_gives_the_same_forecast_by_an_option(c: TestClient, weather: np.ndarray) -> None:
    rows = weather[300:330]
    options = {"horizon": 2, "quantiles": [0.25, 0.75]}
    mine = c.post("/predict", json={"inputs": [rows.tolist()], "forecast": options}).json()["forecast"][0]
    theirs = c.post(URL, json={"model": "ahead", "inputs": [series(rows)], "options": options}).json()
    (content,) = theirs["outputs"][0]["content"]
    np.testing.assert_allclose(np.array(mine["mean"])[:, 0], content["mean_forecast"], rtol=0, atol=1e-6)
    assert set(mine["quantiles"]) == {"0.25", "0.75"}
    for q in ("0.25", "0.75"):
        np.testing.assert_allclose(np.array(mine["quantiles"][q])[:, 0], content["quantiles"][q], rtol=0, atol=1e-6)
    assert "forecast" not in c.post("/predict", json={"inputs": [rows.tolist()]}).json()


@pytest.mark.parametrize(
    ("frequency", "start", "steps", "expected"),
    [
        ("D", "2015-12-02T00:00:00Z", 30, "2016-01-01T00:00:00Z"),
        ("HOUR", "2025-06-05T13:10:00+02:00", 5, "2025-06-05T18:10:00+02:00"),
        ("M", "2024-01-31T00:00:00", 1, "2024-02-29T00:00:00"),  # a month on: the last day of a short month
        ("Y", "2023-03-01", 2, "2025-03-01T00:00:00"),
        ("W", "2025-01-01T00:00:00Z", 3, "2025-01-22T00:00:00Z"),
    ],
)
def test_the_forecast_starts_one_period_after_the_series(
    c: TestClient, weather: np.ndarray, frequency: str, start: str, steps: int, expected: str
) -> None:
    item = {**series(weather[:steps]), "frequency": frequency, "start_timestamp": start}
    r = c.post(URL, json={"model": "ahead", "inputs": [item], "options": {"horizon": 1}})
    (content,) = r.json()["outputs"][0]["content"]
    assert content["start_timestamp"] == expected and content["frequency"] == frequency
    assert "quantiles" not in content  # none asked: none given
    r = c.post(URL, json={"model": "ahead", "inputs": [series(weather[:steps])], "options": {"horizon": 1}})
    assert r.json()["outputs"][0]["content"][0]["start_timestamp"] is None  # no start given


def bad(c: TestClient, body: Any, status: int = 400) -> dict[str, Any]:
    r = c.post(URL, json=body)
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"code", "message", "param", "type"}
    return error


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        ({"options": {"horizon": 4}}, "options.horizon", "Should be 1 to 3"),
        ({"options": {"horizon": 0}}, "options.horizon", "Should be 1 to 3"),
        ({"options": {"horizon": True}}, "options.horizon", "valid integer"),
        ({"options": {}}, "options.horizon", "Field required"),
        ({"options": {"horizon": 1, "quantiles": [0.5, 1.0]}}, "options.quantiles.1", "within 0.005 to 0.995"),
        ({"options": {"horizon": 1, "quantiles": [0.5, 0.5]}}, "options.quantiles.1", "twice"),
        ({"options": {"horizon": 1, "quantiles": ["0.5"]}}, "options.quantiles.0", "valid number"),
        ({"inputs": []}, "inputs", "at least one"),
        (
            {"inputs": [{"type": "multivariate_time_series", "name": "s", "frequency": "D"}]},
            "inputs.0.series",
            "required",
        ),
        (
            {"inputs": [{**series(np.ones((3, 4))), "type": "univariate_time_series"}]},
            "inputs.0.type",
            "reads 4 values",
        ),
        ({"inputs": [{**series(np.ones((3, 4))), "type": "matrix"}]}, "inputs.0.type", "univariate_time_series or"),
        ({"inputs": [series(np.ones((3, 4))), series(np.ones((2, 4)))]}, "inputs.1.name", "given twice"),
        ({"inputs": [{**series(np.ones((3, 4))), "frequency": "fortnight"}]}, "inputs.0.frequency", "one of"),
        ({"inputs": [{**series(np.ones((3, 4))), "start_timestamp": "yesterday"}]}, "inputs.0.start_timestamp", "ISO"),
        (
            {"inputs": [{**series(np.ones((3, 4))), "start_timestamp": "9999-12-31"}]},
            "inputs.0.start_timestamp",
            "past the year 9999",
        ),
        (
            {"inputs": [{**series(np.ones((3, 4))), "start_timestamp": "9999-01-01", "frequency": "Y"}]},
            "inputs.0.start_timestamp",
            "past the year 9999",
        ),
        (
            {"inputs": [{**series(np.ones((3, 4))), "series": [[1, 2, 3, 4], [1, 2, 3]]}]},
            "inputs.0.series.1",
            "4 values",
        ),
        (
            {"inputs": [{**series(np.ones((3, 4))), "series": [[1, 2, 3, 4], [1, 2, "x", 4]]}]},
            "inputs.0.series.1.2",
            "number",
        ),
        ({"inputs": [{**series(np.ones((3, 4))), "series": []}]}, "inputs.0.series", "at least 1"),
        ({"inputs": [series(np.ones((601, 4)))]}, "inputs.0.series", "at most 600"),
        ({"inputs": [series(np.ones((2, 4)), str(k)) for k in range(17)]}, "inputs", "at most 16"),
        ({"model": ""}, "model", "Field required"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(c: TestClient, change: dict[str, Any], param: str, says: str) -> None:
    body = {"model": "ahead", "inputs": [series(np.ones((3, 4)))], "options": {"horizon": 1}, **change}
    error = bad(c, body)
    assert error["param"] == param and says in error["message"] and error["type"] == "invalid_request_error"


def test_the_other_errors_keep_the_apis_shape(c: TestClient, settings: Settings) -> None:
    error = bad(c, {"model": "nope", "inputs": [series(np.ones((3, 4)))], "options": {"horizon": 1}}, 404)
    assert error["code"] == "unknown_model" and "nope" in error["message"]
    r = c.post(URL, content=b"[1, 2")
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_invalid"
    r = c.post(URL, content=b"x" * (settings.max_body_bytes + 1))
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


def test_a_model_without_intervals_forecasts_its_one_step(c: TestClient, weather: np.ndarray) -> None:
    body = {"model": "tiny", "inputs": [series(weather[:10])], "options": {"horizon": 1}}
    content = c.post(URL, json=body).json()["outputs"][0]["content"][0]
    last = c.post("/v1/models/tiny/predict", json={"inputs": [weather[:10].tolist()]}).json()["outputs"][0][-1]
    np.testing.assert_allclose(content["mean_forecast"], last, rtol=0, atol=1e-6)
    assert "has no intervals" in bad(c, {**body, "options": {"horizon": 1, "quantiles": [0.5]}})["message"]
    assert "Should be 1 to 1" in bad(c, {**body, "options": {"horizon": 2}})["message"]
    r = c.post("/v1/models/tiny/predict", json={"inputs": [weather[:3].tolist()], "forecast": {"horizon": 2}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "forecast", "horizon"]


@pytest.mark.parametrize(
    ("forecast", "loc"),
    [
        ({"horizon": 9}, ["body", "forecast", "horizon"]),
        ({"horizon": 1, "quantiles": [0.001]}, ["body", "forecast", "quantiles", 0]),
        ({"horizon": 1, "extra": 1}, ["body", "forecast", "extra"]),
        ({"quantiles": [0.5]}, ["body", "forecast", "horizon"]),
        ([1], ["body", "forecast"]),
    ],
)
def test_predicts_forecast_option_is_checked(c: TestClient, forecast: Any, loc: list[Any]) -> None:
    r = c.post("/predict", json={"inputs": [[[0.0, 10.0, 5.0, 3.0]]], "forecast": forecast})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"horizons": {"steps": 2, "targets": ["temp_max"]}}, "2 steps of 1 targets is not the 3 outputs"),
        ({"horizons": {"steps": 0, "targets": ["temp_max"]}}, "positive integer"),
        ({"intervals": {"levels": [0.9, 0.1], "quantiles": []}}, "ascend"),
        ({"intervals": {"levels": [0.1, 0.9], "quantiles": [[[1.0], [0.0]]] * 3}}, "must not decrease"),
        ({"intervals": {"levels": [0.1, 0.9], "quantiles": [[[0.0], [1.0]]]}}, "shape [3, 2, 1]"),
    ],
)
def test_a_model_whose_horizons_or_intervals_are_wrong_does_not_load(
    ahead_repo: Path, tmp_path: Path, change: dict[str, Any], says: str
) -> None:
    folder = tmp_path / "ahead" / "1"
    folder.mkdir(parents=True)
    for f in (ahead_repo / "ahead" / "1").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(ModelLoadError, match=says.replace("[", r"\[").replace("]", r"\]")):
        Engine.load(folder, "cpu", 1, 1)


def test_a_streams_chunks_carry_their_forecast_and_explanation(c: TestClient, weather: np.ndarray) -> None:
    """Over the WebSocket, each chunk's forecast is the whole prefix's on /predict, and its explanation the
    chunk's with the states carried in."""
    rows, options = weather[200:260], {"horizon": 3, "quantiles": [0.1, 0.9]}
    with c.websocket_connect("/v1/models/ahead/stream") as ws:
        for end in (20, 40, 60):
            ws.send_json({"stream": "s", "inputs": rows[end - 20 : end].tolist(), "forecast": options, "explain": True})
            got = ws.receive_json()
            whole = c.post("/predict", json={"inputs": [rows[:end].tolist()], "forecast": options}).json()
            want = whole["forecast"][0]
            np.testing.assert_allclose(got["forecast"]["mean"], want["mean"], rtol=0, atol=1e-5)
            for q in ("0.1", "0.9"):
                np.testing.assert_allclose(got["forecast"]["quantiles"][q], want["quantiles"][q], rtol=0, atol=1e-5)
            prefix = c.post("/predict", json={"inputs": [rows[: end - 20].tolist()]}).json() if end > 20 else None
            states = {"h0": prefix["hn"], "c0": prefix["cn"]} if prefix else {}
            chunk = {"inputs": [rows[end - 20 : end].tolist()], "explain": True, **states}
            explained = c.post("/predict", json=chunk).json()["explanation"][0]
            for gate in ("forget", "input", "output", "cell"):
                np.testing.assert_allclose(got["explanation"][gate], explained[gate], rtol=0, atol=1e-5)
        ws.send_json({"stream": "s", "inputs": rows[:2].tolist(), "forecast": {"horizon": 9}})
        closed = ws.receive()
    assert closed["type"] == "websocket.close" and closed["code"] == 1007 and "forecast.horizon" in closed["reason"]


def test_a_key_given_twice_is_refused_and_the_route_is_counted_by_name(c: TestClient, weather: np.ndarray) -> None:
    body = b'{"model": "nope", "model": "ahead", "inputs": [], "options": {"horizon": 1}}'
    r = c.post(URL, content=body)
    assert (
        r.status_code == 400
        and r.json()["error"]["code"] == "duplicate_key"
        and "model" in r.json()["error"]["message"]
    )
    item = {**series(weather[:3]), "start_timestamp": "2025-01-01T00:00:00z"}  # RFC 3339 allows a small z
    content = c.post(URL, json={"model": "ahead", "inputs": [item], "options": {"horizon": 1}}).json()
    assert content["outputs"][0]["content"][0]["start_timestamp"] == "2025-01-04T00:00:00Z"
    assert 'lstm_requests_total{route="/v1/timeseries/forecast",status="400"}' in c.get("/metrics").text


def test_a_sequence_started_on_a_one_step_version_goes_on_there_after_a_wider_one_is_added(
    ahead_repo: Path, settings: Settings, tmp_path: Path, weather: np.ndarray
) -> None:
    """A version of more horizons reads what the one-step version reads: a server-held sequence begun on the
    one-step version continues there through the unversioned route, and a forecast it cannot give is a 422."""
    for version, source in ((1, "tiny"), (2, "ahead")):
        folder = tmp_path / "m" / str(version)
        folder.mkdir(parents=True)
        for f in (ahead_repo / source / "1").iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nversion_policy: { all: {} }\n')
    rows = weather[10:30].tolist()
    with app_client(settings, model_repository=tmp_path, model_name="m") as c:
        start = {"inputs": [rows[:10]], "sequence": {"id": "s1", "start": True}}
        first = c.post("/v1/models/m/versions/1/predict", json=start).json()
        go_on = {"inputs": [rows[10:]], "sequence": {"id": "s1", "end": True}}
        r = c.post("/v1/models/m/predict", json={**go_on, "forecast": {"horizon": 3}})
        assert r.status_code == 422 and "cannot give this forecast" in r.text  # version 1 forecasts one step
        second = c.post("/v1/models/m/predict", json=go_on)
        assert second.status_code == 200 and second.json()["model"] == {"name": "m", "version": "1"}
        whole = c.post("/v1/models/m/versions/1/predict", json={"inputs": [rows]}).json()["outputs"][0]
    np.testing.assert_allclose(first["outputs"][0] + second.json()["outputs"][0], whole, rtol=0, atol=1e-5)
