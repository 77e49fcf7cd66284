"""Start-up refusals and the graceful drain, on real server processes."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.server.shutdown import DRAINING
from service.settings import Settings

from .conftest import ROOT, app_client, running_server

ROW = [0.0, 10.0, 5.0, 3.0]


def start(repo: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LSTM_MODEL_REPOSITORY": str(repo), "LSTM_PORT": "1", "LSTM_PROVIDER": "auto"}
    return subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def broken(repo: Path, tmp_path: Path, how: str) -> Path:
    root = tmp_path / "models"
    shutil.copytree(repo, root)
    folder = root / "tiny" / "1"
    if how == "missing":
        (folder / "model.onnx").unlink()
        (folder / "metadata.json").unlink()
    elif how == "unreadable metadata":
        (folder / "metadata.json").write_text("{not json")
    elif how == "corrupt":
        (folder / "model.onnx").write_bytes(b"\x08\x07garbage" * 64)
    elif how == "mismatched":
        meta = json.loads((folder / "metadata.json").read_text())
        meta["input_size"] = 7
        (folder / "metadata.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("missing", "no model in the repository"),
        ("corrupt", "cannot be loaded by ONNX Runtime"),
        ("mismatched", "input_size is 4 but metadata.json says 7"),
        ("unreadable metadata", "metadata.json is unreadable"),
    ],
)
def test_a_bad_model_stops_start_up_with_one_clear_line(repo: Path, tmp_path: Path, how: str, says: str) -> None:
    if how == "missing":
        (tmp_path / "models").mkdir()
        root = tmp_path / "models"
    else:
        root = broken(repo, tmp_path, how)
    done = start(root)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    entry = json.loads(lines[0])
    assert entry["level"] == "error" and entry["msg"].startswith("cannot serve: ") and says in entry["msg"]


def test_readiness_turns_false_while_draining(settings: Settings) -> None:
    with app_client(settings) as c:
        assert c.get("/health/ready").status_code == 200
        DRAINING.set()
        try:
            assert c.get("/health/ready").status_code == 503
            assert c.get("/health/live").status_code == 200
        finally:
            DRAINING.clear()


def test_sigterm_drains_in_flight_requests_then_exits_0(repo: Path) -> None:
    heavy = {"inputs": [np.tile(ROW, (8000, 1)).tolist()] * 2, "explain": True}  # most of a second
    with running_server(repo, {"LSTM_WORKERS": "1", "LSTM_EXPLAIN_MAX_VALUES": "300000"}) as (url, proc):

        async def scenario() -> httpx.Response:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                in_flight = asyncio.ensure_future(http.post("/predict", json=heavy))
                await asyncio.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.2)
                with pytest.raises(httpx.TransportError):  # no new connections while draining
                    await httpx.AsyncClient(base_url=url, timeout=2).get("/health/ready")
                return await in_flight

        answer = asyncio.run(scenario())
        assert answer.status_code == 200 and len(answer.json()["explanation"][0]["cell"][0]) == 8000
        assert proc.wait(timeout=30) == 0


def test_not_ready_is_not_serving(settings: Settings) -> None:
    from service.app import create_app

    c = TestClient(create_app(settings))  # lifespan not entered: no model
    assert c.post("/predict", json={"inputs": [[ROW]]}).status_code == 503
