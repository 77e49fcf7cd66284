"""Model control while serving: explicit loads and unloads, the repository poll, the swap and the drain."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import torch
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.model.contract import MODEL_FILE
from service.model.errors import ModelLoadError
from service.pipeline import memory
from service.pipeline.control import ModelControl
from service.pipeline.errors import ControlIncomplete, LoadFailed, UnknownModel
from service.pipeline.journal import Journal
from service.pipeline.registry import Registry
from service.protocols import rest
from service.settings import Settings
from training.export import export
from training.model import LSTMForecaster, ModelConfig

from .conftest import app_client, running_server
from .test_observability import sample

ROWS = [[0.0, 10.0, 5.0, 3.0], [1.0, 12.0, 6.0, 2.0], [0.3, 8.0, 2.0, 4.0]]
BODY = {"inputs": [ROWS]}


@pytest.fixture(scope="module")
def builds(repo: Path, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions to copy into a repository: tiny/1 (trained), tiny/2 (its head shifted by +1, so every answer
    differs), tiny/3 (shifted by +2)."""
    root = tmp_path_factory.mktemp("builds")
    shutil.copytree(repo / "tiny", root / "tiny")
    ckpt = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    for version in (2, 3):
        shifted = dict(ckpt, model=dict(ckpt["model"]))
        shifted["model"]["head.bias"] = ckpt["model"]["head.bias"] + (version - 1) / ckpt["stats"]["y_std"][0]
        path = root.parent / f"shifted-{version}.pt"
        torch.save(shifted, path)
        export(path, root, "tiny", version)
    return root


@pytest.fixture(scope="module")
def wide(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model of 2 layers of 256 units (untrained: its weights are what the memory test needs), as wide/1."""
    root = tmp_path_factory.mktemp("wide")
    ckpt = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    torch.manual_seed(0)
    config = {**ckpt["config"]["model"], "hidden_size": 256}
    weights = LSTMForecaster(ModelConfig(**config)).state_dict()
    weights |= {k: v for k, v in ckpt["model"].items() if k.startswith(("x_", "y_"))}  # the data's scaling
    path = root.parent / "wide.pt"
    torch.save({**ckpt, "config": {**ckpt["config"], "model": config}, "model": weights}, path)
    export(path, root, "wide", 1)
    return root


@pytest.fixture()
def models(builds: Path, tmp_path: Path) -> Path:
    """A repository of this test's own: tiny/1 (serving its latest version only), and other/1 (the same
    weights under another name)."""
    root = tmp_path / "models"
    shutil.copytree(builds / "tiny" / "1", root / "tiny" / "1")
    config = (builds / "tiny" / "config.pbtxt").read_text()
    latest = config.replace("version_policy: { all: {} }", "version_policy: { latest: { num_versions: 1 } }")
    assert latest != config
    (root / "tiny" / "config.pbtxt").write_text(latest)
    shutil.copytree(builds / "tiny" / "1", root / "other" / "1")
    return root


def add(builds: Path, root: Path, version: int, name: str = "tiny") -> Path:
    """Copy a built version into the repository the way an operator should: a folder beside it, then a rename."""
    staging = root / name / f".incoming-{version}"
    shutil.copytree(builds / "tiny" / str(version), staging)
    return staging.rename(root / name / str(version))


def reference(folder: Path, rows: list[list[float]] = ROWS) -> np.ndarray:
    """ONNX Runtime in this process on the version's own file: the numbers the server must answer."""
    session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    x = np.asarray([rows], dtype=np.float32)
    zeros = np.zeros((2, 1, 8), dtype=np.float32)
    y, _, _ = session.run(None, {"x": x, "h0": zeros, "c0": zeros, "lengths": np.array([len(rows)], np.int32)})
    return np.asarray(y[0])


def outputs(c: TestClient, path: str = "/predict") -> np.ndarray:
    r = c.post(path, json=BODY)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"][0])


@pytest.fixture()
def explicit(settings: Settings, models: Path) -> Iterator[TestClient]:
    with app_client(settings, model_repository=models, model_name="tiny", model_control="explicit") as c:
        yield c


def load(c: TestClient, name: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return c.post(f"/v2/repository/models/{name}/load", **kwargs)


def registry(c: TestClient) -> Registry:
    return c.app.state.registry  # type: ignore[attr-defined,no-any-return]


def settle(c: TestClient) -> None:
    """Wait until every version that stopped serving has been freed."""
    c.portal.call(registry(c).wait_freed)  # type: ignore[union-attr]


def test_an_explicit_load_swaps_in_the_new_version(explicit: TestClient, builds: Path, models: Path) -> None:
    c = explicit
    np.testing.assert_allclose(outputs(c), reference(models / "tiny" / "1"), atol=1e-5)
    old = registry(c).default_plane
    add(builds, models, 2)
    np.testing.assert_allclose(outputs(c), reference(models / "tiny" / "1"), atol=1e-5)  # explicit: not yet
    r = load(c, "tiny")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "tiny", "serving": ["2"], "loaded": ["2"]}
    np.testing.assert_allclose(outputs(c), reference(models / "tiny" / "2"), atol=1e-5)
    assert c.get("/model").json()["version"] == "2"  # the default model follows its latest version
    np.testing.assert_allclose(outputs(c, "/v1/models/tiny/versions/2/predict"), reference(models / "tiny" / "2"))
    assert c.post("/v1/models/tiny/versions/1/predict", json=BODY).status_code == 404
    index = c.get("/v2/repository/index").json()
    assert {
        "name": "tiny",
        "version": "1",
        "state": "UNAVAILABLE",
        "reason": "not named by the model's version_policy",
    } in index
    settle(c)
    assert old.retired and not hasattr(old.engine, "session")  # freed: its session released
    assert "2" in c.get("/openapi.json").json()["info"]["description"]  # the page describes what serves now


def test_a_load_keeps_versions_whose_files_did_not_change(explicit: TestClient, models: Path) -> None:
    c = explicit
    before = registry(c).planes[("tiny", "1")]
    r = load(c, "tiny")
    assert r.status_code == 200 and r.json()["loaded"] == []
    assert registry(c).planes[("tiny", "1")] is before and not before.retired


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda v: (v / MODEL_FILE).write_bytes(b"not an onnx file"), "cannot be loaded by ONNX Runtime"),
        (lambda v: (v / "metadata.json").write_text('{"input_size": 4}'), "missing or malformed field"),
        (
            lambda v: (v / "metadata.json").write_text(
                (v / "metadata.json").read_text().replace('"hidden_size": 8', '"hidden_size": 16')
            ),
            "the graph's hidden_size is 8",
        ),
        (lambda v: (v / "metadata.json").unlink(), "metadata.json is missing"),
        (
            lambda v: (v / "metadata.json").write_text(
                (v / "metadata.json").read_text().replace('"feature_means": [', '"feature_means": [1.0, ')
            ),
            "feature_means must be 4 finite numbers",
        ),
    ],
    ids=["corrupt-file", "metadata-fields", "metadata-mismatch", "no-metadata", "feature-means"],
)
def test_a_load_that_fails_leaves_what_serves_and_says_why(
    explicit: TestClient, builds: Path, models: Path, caplog: pytest.LogCaptureFixture, damage, why: str
) -> None:
    c = explicit
    serving = registry(c).default_plane
    damage(add(builds, models, 2))
    before = c.get("/metrics").text
    with caplog.at_level(logging.ERROR, logger="service.pipeline.control"):
        r = load(c, "tiny")
    assert r.status_code == 400
    assert why in r.json()["error"]
    assert "what was serving serves on" in r.json()["error"]
    assert any(why in rec.getMessage() for rec in caplog.records)  # and in the log
    assert str(models) not in r.json()["error"] and "tiny/2/" in r.json()["error"]  # the repository's paths only
    assert registry(c).default_plane is serving and not serving.retired
    np.testing.assert_allclose(outputs(c), reference(models / "tiny" / "1"), atol=1e-5)
    index = {(e["name"], e["version"]): e for e in c.get("/v2/repository/index").json()}
    assert index[("tiny", "2")]["state"] == "UNAVAILABLE" and why in index[("tiny", "2")]["reason"]
    after = c.get("/metrics").text
    grew = sample(after, "lstm_model_loads_total", model="tiny", version="2", outcome="failed")
    assert grew - sample(before, "lstm_model_loads_total", model="tiny", version="2", outcome="failed") == 1


def test_unload_stops_a_model_and_a_load_brings_it_back(explicit: TestClient, models: Path) -> None:
    c = explicit
    assert c.post("/v2/repository/models/other/unload").status_code == 200
    r = c.post("/v1/models/other/predict", json=BODY)
    assert r.status_code == 404 and "repository index" in r.json()["detail"]
    assert c.post("/v2/models/other/infer", json={"inputs": []}).status_code == 404
    assert c.get("/v2/models/other/ready").status_code == 404
    index = c.post("/v2/repository/index", json={}).json()
    assert {"name": "other", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    assert all(e["name"] != "other" for e in c.post("/v2/repository/index", json={"ready": True}).json())
    assert load(c, "other").status_code == 200
    np.testing.assert_allclose(outputs(c, "/v1/models/other/predict"), reference(models / "other" / "1"), atol=1e-5)


def test_the_default_model_cannot_be_unloaded(explicit: TestClient) -> None:
    r = explicit.post("/v2/repository/models/tiny/unload")
    assert r.status_code == 409 and "default model" in r.json()["error"]
    assert explicit.post("/predict", json=BODY).status_code == 200


def test_a_pinned_default_version_cannot_be_dropped(settings: Settings, builds: Path, models: Path) -> None:
    with app_client(
        settings, model_repository=models, model_name="tiny", model_version=1, model_control="explicit"
    ) as c:
        add(builds, models, 2)
        r = load(c, "tiny")  # version_policy latest 1 would serve 2 alone
        assert r.status_code == 400 and "pinned to version 1 by LSTM_MODEL_VERSION" in r.json()["error"]
        np.testing.assert_allclose(outputs(c), reference(models / "tiny" / "1"), atol=1e-5)
        (models / "tiny" / "config.pbtxt").write_text('name: "tiny"\nversion_policy: { all: {} }\n')
        assert load(c, "tiny").json()["serving"] == ["1", "2"]
        assert c.get("/model").json()["version"] == "1"  # still pinned


@pytest.mark.parametrize(
    "name, body, status, why",
    [
        ("nope", None, 404, "No model 'nope' in the repository"),
        (".incoming-2", None, 404, "No model '.incoming-2' in the repository"),
        ("tiny", {"parameters": {"config": "{}"}}, 400, "parameters.config"),
        ("tiny", {"parameters": {"file:1/model.onnx": "AAAA"}}, 400, "parameters.file:1/model.onnx"),
        ("tiny", {"parameters": []}, 400, "parameters"),
        ("tiny", [], 400, "body"),
        ("tiny", {"x": "y" * 2000}, 413, "1024"),
    ],
)
def test_bad_load_requests_name_what_is_wrong(
    explicit: TestClient, name: str, body: object, status: int, why: str
) -> None:
    r = load(explicit, name, json=body) if body is not None else load(explicit, name)
    assert r.status_code == status, r.text
    assert why in r.json()["error"]


def test_a_load_never_reaches_out_of_the_repository(settings: Settings, models: Path) -> None:
    (models.parent / "3").mkdir()  # a version folder beside the repository: ".." would look like a model
    shutil.copytree(models / "tiny" / "1", models.parent / "3" / "1")
    s = settings.model_copy(update={"model_repository": models, "model_name": "tiny", "model_control": "explicit"})
    control = ModelControl.create(s)

    async def attempts() -> None:
        for name in ("..", "../models/tiny", "tiny/1", "/tmp", ".", ""):
            with pytest.raises(UnknownModel, match="in the repository to load"):
                await control.load(name)
        await control.registry.close()

    asyncio.run(attempts())


def test_bad_unload_requests(explicit: TestClient) -> None:
    r = explicit.post("/v2/repository/models/nope/unload")
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = explicit.post("/v2/repository/models/other/unload", json={"parameters": {"unload_dependents": "yes"}})
    assert r.status_code == 400 and "parameters.unload_dependents" in r.json()["error"]
    assert (
        explicit.post(
            "/v2/repository/models/other/unload", json={"parameters": {"unload_dependents": True}}
        ).status_code
        == 200
    )


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_loads_on_request_need_explicit_control(settings: Settings, models: Path, mode: str) -> None:
    with app_client(settings, model_repository=models, model_name="tiny", model_control=mode) as c:
        for action in ("load", "unload"):
            r = c.post(f"/v2/repository/models/other/{action}")
            assert r.status_code == 400 and "LSTM_MODEL_CONTROL" in r.json()["error"]
        assert c.post("/v1/models/other/predict", json=BODY).status_code == 200


def test_loads_need_a_key_when_keys_are_set(settings: Settings, models: Path) -> None:
    with app_client(
        settings, model_repository=models, model_name="tiny", model_control="explicit", api_keys=["k"]
    ) as c:
        assert c.post("/v2/repository/models/other/unload").status_code == 401
        assert load(c, "tiny").status_code == 401
        assert c.post("/v2/repository/models/other/unload", headers={"Authorization": "Bearer k"}).status_code == 200


def test_server_metadata_announces_the_repository_extension(explicit: TestClient) -> None:
    assert "model_repository" in explicit.get("/v2").json()["extensions"]


def test_metrics_per_model_and_version(explicit: TestClient, builds: Path, models: Path) -> None:
    c = explicit
    before = c.get("/metrics").text
    outputs(c)
    assert c.post("/predict", json={"inputs": []}).status_code == 422
    add(builds, models, 2)
    assert load(c, "tiny").status_code == 200
    outputs(c)
    outputs(c, "/v1/models/other/predict")
    settle(c)
    text = c.get("/metrics").text

    def grew(metric: str, **labels: str) -> float:
        return sample(text, metric, **labels) - sample(before, metric, **labels)

    assert grew("lstm_model_request_duration_seconds_count", model="tiny", version="1") == 2
    assert grew("lstm_model_request_errors_total", model="tiny", version="1") == 1
    assert grew("lstm_model_request_duration_seconds_count", model="tiny", version="2") == 1
    assert grew("lstm_model_request_errors_total", model="tiny", version="2") == 0
    assert grew("lstm_model_request_duration_seconds_count", model="other", version="1") == 1
    assert grew("lstm_inference_duration_seconds_count", model="tiny", version="2") >= 1
    assert grew("lstm_batch_size_sequences_count", model="other", version="1") >= 1
    assert grew("lstm_model_loads_total", model="tiny", version="2", outcome="ok") == 1
    assert grew("lstm_model_unloads_total", model="tiny", version="1") == 1
    assert sample(text, "lstm_model_info", name="tiny", version="1") == 0
    assert sample(text, "lstm_model_info", name="tiny", version="2") == 1


def test_a_stream_on_a_version_that_stopped_serving_is_closed_to_reconnect(
    explicit: TestClient, builds: Path, models: Path
) -> None:
    c = explicit
    with c.websocket_connect("/v1/models/tiny/stream") as ws:
        ws.send_json({"stream": "a", "inputs": ROWS})
        first = ws.receive_json()["outputs"]
        np.testing.assert_allclose(first, reference(models / "tiny" / "1"), atol=1e-5)
        add(builds, models, 2)
        assert load(c, "tiny").status_code == 200
        ws.send_json({"stream": "a", "inputs": ROWS})
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1012 and "reconnect" in closed.value.reason
    with c.websocket_connect("/v1/models/tiny/stream") as ws:
        ws.send_json({"stream": "a", "inputs": ROWS})
        np.testing.assert_allclose(ws.receive_json()["outputs"], reference(models / "tiny" / "2"), atol=1e-5)


def test_a_server_held_sequence_ends_with_its_version(explicit: TestClient, builds: Path, models: Path) -> None:
    c = explicit
    start = {"inputs": [ROWS], "sequence": {"id": "s1", "start": True}}
    assert c.post("/predict", json=start).status_code == 200
    add(builds, models, 2)
    assert load(c, "tiny").status_code == 200
    r = c.post("/predict", json={"inputs": [ROWS], "sequence": {"id": "s1"}})
    assert r.status_code == 422
    msg = r.json()["detail"][0]["msg"]
    assert "version 1 of model 'tiny', which stopped serving at" in msg, msg
    assert c.post("/predict", json=start).status_code == 200  # started again, on version 2


def test_admitted_requests_finish_on_the_version_they_started_on(
    settings: Settings, builds: Path, models: Path
) -> None:
    """A request admitted on version 1 (its body still arriving) when version 2 swaps in is answered by version
    1; version 1 is freed only after, and requests after the swap go to version 2."""
    s = settings.model_copy(update={"model_repository": models, "model_name": "tiny", "model_control": "explicit"})
    control = ModelControl.create(s)
    reg = control.registry

    async def scenario() -> None:
        reg.start()
        old = reg.default_plane
        body_arrives = asyncio.Event()

        async def read() -> bytes:
            await body_arrives.wait()
            return orjson.dumps(BODY)

        pending = asyncio.create_task(old.serve(rest.CODEC, read))
        while not old.active:  # admitted, its body still to come
            await asyncio.sleep(0)
        add(builds, models, 2)
        await control.load("tiny")
        assert reg.default_plane is not old and old.retired and not old.drained.is_set()
        assert hasattr(old.engine, "session")  # not freed while its request is in flight
        body_arrives.set()
        answer = orjson.loads(await pending)
        np.testing.assert_allclose(answer["outputs"][0], reference(models / "tiny" / "1"), atol=1e-5)
        await reg.wait_freed()
        assert not hasattr(old.engine, "session")
        new = orjson.loads(await reg.default_plane.serve(rest.CODEC, read))
        np.testing.assert_allclose(new["outputs"][0], reference(models / "tiny" / "2"), atol=1e-5)
        await reg.close()

    asyncio.run(scenario())


def test_the_poll_loads_changes_and_unloads_what_is_gone(
    settings: Settings, builds: Path, models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = {"model_repository": models, "model_name": "tiny", "model_control": "poll", "repository_poll_s": 0.05}
    with app_client(settings, **overrides) as c:

        def until(check, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
            deadline = time.monotonic() + seconds
            while not check():
                assert time.monotonic() < deadline, "the poll did not apply the change"
                time.sleep(0.05)

        add(builds, models, 2)
        until(lambda: c.get("/model").json()["version"] == "2")
        np.testing.assert_allclose(outputs(c), reference(models / "tiny" / "2"), atol=1e-5)
        # a broken version: the one serving serves on, and the next good copy is taken
        broken = add(builds, models, 3)
        (broken / MODEL_FILE).write_bytes(b"broken")
        failed = {"model": "tiny", "version": "3", "outcome": "failed"}
        until(lambda: sample(c.get("/metrics").text, "lstm_model_loads_total", **failed) == 1)
        time.sleep(0.2)
        assert sample(c.get("/metrics").text, "lstm_model_loads_total", **failed) == 1  # tried once, not every look
        np.testing.assert_allclose(outputs(c), reference(models / "tiny" / "2"), atol=1e-5)
        shutil.copy(builds / "tiny" / "3" / MODEL_FILE, broken / MODEL_FILE)
        until(lambda: c.get("/model").json()["version"] == "3")
        np.testing.assert_allclose(outputs(c), reference(models / "tiny" / "3"), atol=1e-5)
        # a model gone from the repository is unloaded; the default model serves on without its files
        shutil.rmtree(models / "other")
        until(lambda: c.post("/v1/models/other/predict", json=BODY).status_code == 404)
        with caplog.at_level(logging.ERROR, logger="service.pipeline.control"):
            shutil.rmtree(models / "tiny")
            until(lambda: "it is the default model: it serves on" in caplog.text)
        np.testing.assert_allclose(outputs(c), reference(builds / "tiny" / "3"), atol=1e-5)
        assert {"name": "tiny", "version": "3", "state": "READY"} in c.get("/v2/repository/index").json()
        # a repository that cannot be read is not an empty one: nothing is unloaded, and the look is retried
        shutil.copytree(builds / "tiny" / "1", models / "other" / "1")
        until(lambda: c.post("/v1/models/other/predict", json=BODY).status_code == 200)
        models.rename(models.with_name("away"))
        until(lambda: "cannot be read" in caplog.text)
        assert c.post("/v1/models/other/predict", json=BODY).status_code == 200
        models.with_name("away").rename(models)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_memory_returns_after_fifty_load_and_unload_cycles(settings: Settings, models: Path, wide: Path) -> None:
    """Load and unload a model of 256 units 50 times: what the process holds after the last cycle is what it held
    after the first few (a version that stopped serving is freed, its batcher's thread ended, its session
    released). Each version kept would hold its weights: over 45 cycles, far more than the margin."""
    shutil.rmtree(models / "other")
    shutil.copytree(wide / "wide", models / "other")
    s = settings.model_copy(update={"model_repository": models, "model_name": "tiny", "model_control": "explicit"})

    def batchers() -> int:  # threads of batchers, this test's and any other test's still running
        return sum(1 for t in threading.enumerate() if t.name == "lstm-batcher")

    before = batchers()
    control = ModelControl.create(s)

    async def cycles() -> list[float]:
        control.registry.start()
        rss = []
        for _ in range(50):
            await control.unload("other")
            await control.load("other")
            await control.registry.wait_freed()
            gc.collect()
            memory.trim()
            rss.append(_rss_mb())
        assert batchers() == before + 2  # tiny's and other's: none left from the 49 versions unloaded
        await control.registry.close()
        return rss

    rss = asyncio.run(cycles())
    # MB, medians against the allocator's noise (about 10 MB here); each version kept costs 5 MB: 200 MB over 40
    assert np.median(rss[-10:]) - np.median(rss[5:15]) < 30, rss


@pytest.mark.parametrize("mode", ["explicit", "poll"])
def test_a_new_version_under_steady_load_fails_no_request(builds: Path, models: Path, mode: str) -> None:
    """The real server, two workers, four clients sending without pause on /predict and /v2: a new version is
    loaded on request (explicit: one worker answers, the other follows its journal) or copied into the
    repository (poll). No request fails, no answer mixes versions, and every answer after the switch has the
    new version's numbers, from the same server process."""
    env = {"LSTM_WORKERS": "2", "LSTM_MODEL_NAME": "tiny", "LSTM_MODEL_CONTROL": mode, "LSTM_REPOSITORY_POLL_S": "0.2"}
    old, new = reference(models / "tiny" / "1"), reference(builds / "tiny" / "2")
    infer = {"inputs": [{"name": "x", "shape": [1, 3, 4], "datatype": "FP32", "data": np.ravel(ROWS).tolist()}]}
    answers: list[tuple[float, str, str]] = []  # when, which version's numbers, which worker
    failures: list[str] = []
    stop = threading.Event()

    def client(k: int) -> None:
        # two clients keep their connections, two open one per request: those reach both workers
        limits = httpx.Limits(max_keepalive_connections=0 if k >= 2 else 1)
        with httpx.Client(base_url=url, timeout=30, limits=limits) as http:
            while not stop.is_set():
                try:
                    if k % 2:
                        r = http.post("/predict", json=BODY)
                        y = np.asarray(r.json()["outputs"][0]) if r.status_code == 200 else None
                    else:
                        r = http.post("/v2/models/tiny/infer", json=infer)
                        y = np.asarray(r.json()["outputs"][0]["data"]).reshape(3, 1) if r.status_code == 200 else None
                except httpx.HTTPError as e:
                    failures.append(repr(e))
                    continue
                if y is None:
                    failures.append(f"{r.status_code} {r.text}")
                    continue
                kind = "new" if np.allclose(y, new, atol=1e-5) else "old" if np.allclose(y, old, atol=1e-5) else "?"
                answers.append((time.monotonic(), kind, r.headers["x-request-id"][:20]))  # a worker's id prefix

    with running_server(models, env) as (url, proc):
        clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in clients:
            t.start()
        time.sleep(1.0)
        add(builds, models, 2)
        if mode == "explicit":
            r = httpx.post(f"{url}/v2/repository/models/tiny/load", timeout=30)
            assert r.status_code == 200, r.text
        switched = time.monotonic()
        deadline = switched + 15
        while time.monotonic() < deadline:  # until a second of answers all from the new version
            recent = [a for a in answers if a[0] > time.monotonic() - 1.0]
            if time.monotonic() > switched + 1.5 and recent and all(a[1] == "new" for a in recent):
                break
            time.sleep(0.1)
        stop.set()
        for t in clients:
            t.join(30)
        assert proc.poll() is None  # the same server, never restarted
    assert not failures, failures[:5]
    kinds = [a[1] for a in answers]
    assert "?" not in kinds
    assert kinds.count("old") > 10 and kinds.count("new") > 10, (kinds.count("old"), kinds.count("new"))
    last = max(i for i, k in enumerate(kinds) if k == "old")  # then only new ones: switched for good
    assert len(kinds) - last > 20 and answers[last][0] < switched + 10
    assert len({worker for _, kind, worker in answers[last + 1 :]}) == 2  # both workers switched


def test_tritonclient_loads_and_unloads(models: Path) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    env = {"LSTM_WORKERS": "1", "LSTM_MODEL_NAME": "tiny", "LSTM_MODEL_CONTROL": "explicit"}
    with running_server(models, env) as (url, _):
        client = triton.InferenceServerClient(url=url.removeprefix("http://"))
        try:
            assert "model_repository" in client.get_server_metadata()["extensions"]
            client.unload_model("other")
            assert not client.is_model_ready("other")
            assert {"name": "other", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in (
                client.get_model_repository_index()
            )
            client.load_model("other")
            assert client.is_model_ready("other", "1")
            with pytest.raises(InferenceServerException, match="No model 'nope'"):
                client.load_model("nope")
            with pytest.raises(InferenceServerException, match="default model"):
                client.unload_model("tiny")
            with pytest.raises(InferenceServerException, match=r"parameters\.config"):
                client.load_model("other", config='{"max_batch_size": 8}')
        finally:
            client.close()


def test_a_version_rewritten_in_place_is_a_new_revision(explicit: TestClient, builds: Path, models: Path) -> None:
    """Version 1's files replaced by other weights and loaded again: it serves the new numbers, its gauge stays
    1, and a server-held sequence started on the old file ends with it (its states are the old weights')."""
    c = explicit
    start = {"inputs": [ROWS], "sequence": {"id": "s2", "start": True}}
    assert c.post("/predict", json=start).status_code == 200
    for name in ("model.onnx", "metadata.json"):
        shutil.copy(builds / "tiny" / "2" / name, models / "tiny" / "1" / name)
    r = load(c, "tiny")
    assert r.json() == {"name": "tiny", "serving": ["1"], "loaded": ["1"]}
    np.testing.assert_allclose(outputs(c), reference(builds / "tiny" / "2"), atol=1e-5)
    text = c.get("/metrics").text
    assert sample(text, "lstm_model_info", name="tiny", version="1") == 1
    r = c.post("/predict", json={"inputs": [ROWS], "sequence": {"id": "s2"}})
    assert r.status_code == 422 and "version 1 of model 'tiny', which stopped serving" in r.json()["detail"][0]["msg"]


def test_a_version_that_fails_to_warm_up_is_a_failed_load(
    explicit: TestClient, builds: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: object) -> None:
        raise FloatingPointError("warm-up went wrong")

    monkeypatch.setattr("service.model.engine.Engine.warmup", broken)
    add(builds, models, 2)
    r = load(explicit, "tiny")
    assert (
        r.status_code == 400 and "failed to warm up" in r.json()["error"] and "warm-up went wrong" in r.json()["error"]
    )
    np.testing.assert_allclose(outputs(explicit), reference(models / "tiny" / "1"), atol=1e-5)


def two_workers(settings: Settings, models: Path, journal: Journal) -> tuple[ModelControl, ModelControl]:
    """Two workers' model controls on one journal, as two live processes (this one and its parent)."""
    s = settings.model_copy(update={"model_repository": models, "model_name": "tiny", "model_control": "explicit"})
    one, two = (
        ModelControl(Registry.load(s), "explicit", 1.0, journal, wait_s=10, pid=pid, workers=2)
        for pid in (os.getpid(), os.getppid())
    )
    one.registry.start()
    two.registry.start()
    return one, two


def test_workers_follow_each_others_loads_through_the_journal(
    settings: Settings, builds: Path, models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers' model controls on one journal (two live pids): a load or unload answered by one is answered
    once the other serves it too; a load the other cannot do is a failed load naming it; a journal deleted or
    damaged starts a new epoch, which every worker applies again."""
    journal = Journal(tmp_path / "control" / "journal.json")
    one, two = two_workers(settings, models, journal)

    async def scenario() -> None:
        two.start()  # following, every FOLLOW_S
        await asyncio.sleep(0.1)  # its first look says it is there
        add(builds, models, 2)
        await one.load("tiny")
        assert two.registry.default == ("tiny", "2")  # answered once the other worker serves it
        await one.unload("other")
        assert two.registry.names() == ["tiny"]
        acks = journal.read().workers
        assert acks[os.getppid()].seen == 2 and acks[os.getppid()].failed == {}
        # a load the other worker cannot do: the answer names it, and what it said
        real = two.registry.build

        def broken(folder: Path):  # type: ignore[no-untyped-def]
            raise ModelLoadError("disk on fire")

        monkeypatch.setattr(two.registry, "build", broken)
        with pytest.raises(LoadFailed, match=f"worker {os.getppid()}: failed to load 'other': disk on fire"):
            await one.load("other")
        monkeypatch.setattr(two.registry, "build", real)
        await one.load("other")  # fixed, loaded again: both serve it
        assert two.registry.names() == ["other", "tiny"]
        # the journal deleted: a new epoch, and the next change reaches the other worker all the same
        journal.path.unlink()
        await one.unload("other")
        assert two.registry.names() == ["tiny"]
        for damage in ('{"epoch": "x"}', "{", "[1]"):
            journal.path.write_text(damage)
            assert journal.read().epoch == ""
            await one.load("other")
            assert two.registry.names() == ["other", "tiny"]
            await one.unload("other")
            assert two.registry.names() == ["tiny"]
        await two.stop()  # a worker that stops following: the answer says so, once its wait is over
        one.wait_s = 0.3
        with pytest.raises(
            ControlIncomplete, match=r"not every other worker of the server had applied it after 0\.3 s"
        ):
            await one.load("other")
        for control in (one, two):
            await control.registry.close()

    asyncio.run(scenario())


def test_a_sequence_goes_on_with_the_version_it_started_on_while_that_serves(
    settings: Settings, builds: Path, models: Path
) -> None:
    """Both versions serve (version_policy all): after version 2 becomes the default, a sequence started on version 1
    through /predict goes on with version 1 there (its answer says so), to its end; new sequences start on 2."""
    (models / "tiny" / "config.pbtxt").write_text('name: "tiny"\nversion_policy: { all: {} }\n')
    with app_client(settings, model_repository=models, model_name="tiny", model_control="explicit") as c:
        first = c.post("/predict", json={"inputs": [ROWS], "sequence": {"id": "old", "start": True}}).json()
        add(builds, models, 2)
        assert load(c, "tiny").json()["serving"] == ["1", "2"]
        r = c.post("/predict", json={"inputs": [ROWS], "sequence": {"id": "old", "end": True}})
        assert r.status_code == 200, r.text
        assert r.json()["model"]["version"] == "1"
        whole = c.post("/v1/models/tiny/versions/1/predict", json={"inputs": [ROWS + ROWS]}).json()["outputs"][0]
        np.testing.assert_allclose(first["outputs"][0] + r.json()["outputs"][0], whole, atol=1e-5)
        new = c.post("/predict", json={"inputs": [ROWS], "sequence": {"id": "new", "start": True}}).json()
        assert new["model"]["version"] == "2"
        # named versions are taken at their word: version 2 does not hold "new2" started on 1
        c.post("/v1/models/tiny/versions/1/predict", json={"inputs": [ROWS], "sequence": {"id": "new2", "start": True}})
        r = c.post("/v1/models/tiny/versions/2/predict", json={"inputs": [ROWS], "sequence": {"id": "new2"}})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "sequence_unknown"
        r = c.post(
            "/v2/models/tiny/infer",
            json={
                "inputs": [{"name": "x", "shape": [1, 3, 4], "datatype": "FP32", "data": np.ravel(ROWS).tolist()}],
                "parameters": {"sequence_id": "new2"},
            },
        )
        assert r.status_code == 200 and r.json()["model_version"] == "1"


def test_a_journal_deleted_during_a_load_still_reaches_every_worker(
    settings: Settings, builds: Path, models: Path, tmp_path: Path
) -> None:
    """The journal deleted after the answering worker wrote the load, before the other looked: the other makes a
    new, empty journal when it looks; the answering worker writes its load (and what else it applied) there
    again, and answers once the other serves it. A journal that cannot be written is a 503 that says so."""
    journal = Journal(tmp_path / "journal.json")
    one, two = two_workers(settings, models, journal)

    async def scenario() -> None:
        await two.follow()  # joined
        add(builds, models, 2)
        loading = asyncio.create_task(one.load("tiny"))
        while "tiny" not in journal.read().models:
            await asyncio.sleep(0.01)
        journal.path.unlink()
        while not loading.done():
            await two.follow()
            await asyncio.sleep(0.05)
        await loading
        assert two.registry.default == ("tiny", "2")
        # an unload, then the journal deleted while nothing happens: the next change carries the unload along
        task = asyncio.create_task(one.unload("other"))
        while not task.done():
            await two.follow()
            await asyncio.sleep(0.05)
        await task
        assert two.registry.names() == ["tiny"]
        journal.path.unlink()
        await two.follow()  # a new, empty journal, joined by two with what it applied (other: unloaded)
        assert journal.read().models == {"other": (1, "unload"), "tiny": (2, "load")}  # sorted by name
        journal.path.unlink()
        journal.path.mkdir()  # not a file any more
        with pytest.raises(ControlIncomplete, match="control journal cannot be written"):
            await one.load("tiny")
        for control in (one, two):
            await control.registry.close()

    asyncio.run(scenario())
