"""Shared fixtures: one tiny model trained on the committed data and exported, and a client serving it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import CONTROL_JOURNAL_ENV, Settings
from training.export import export
from training.train import TrainConfig, train

for _name in [n for n in os.environ if n.startswith("OTEL_")]:  # traces on only where a test turns them on
    del os.environ[_name]

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "seattle-weather.csv"
TINY = {"hidden_size": 8, "num_layers": 2, "window": 32, "batch_size": 16, "windows_per_epoch": 64}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a tiny model trained for a few epochs on the committed CSV (seconds)."""
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(data=str(DATA), out=str(out), max_epochs=3, plots=False, **TINY))
    return out


@pytest.fixture(scope="session")
def repo(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding the tiny model as tiny/1."""
    root = tmp_path_factory.mktemp("models")
    export(tiny_run / "checkpoint.pt", root, "tiny", 1)
    return root


@pytest.fixture(scope="session")
def settings(repo: Path) -> Settings:
    return Settings(
        model_repository=repo,
        provider="cpu",
        max_batch_size=16,
        max_steps=600,
        max_body_bytes=256 * 1024,
        explain_max_values=4096,  # 256 steps of the tiny model's 2 layers x 8 units
    )


@pytest.fixture(scope="session", params=[True, False], ids=["fast-path", "fastapi-route"])
def client(settings: Settings, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """The app with /predict answered by the ASGI fast path, and by the FastAPI route."""
    with TestClient(create_app(settings.model_copy(update={"fast_path": request.param}))) as c:
        yield c


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def weather() -> np.ndarray:
    """The committed data's feature rows [N, 4], raw units: realistic inputs."""
    from training.data import load_csv

    cfg = TrainConfig()
    return load_csv(DATA, cfg.features, cfg.targets).features


def windows(weather: np.ndarray, lengths: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Consecutive rows of the real data, one window per length."""
    starts = rng.integers(0, len(weather) - max(lengths), size=len(lengths))
    return [weather[s : s + n] for s, n in zip(starts, lengths, strict=True)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(
    repo: Path, env: dict[str, str] | None = None, output: IO[Any] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The real server (`python -m service`) on 127.0.0.1 and a free port, ready; killed if still running after."""
    port = free_port()
    state = tempfile.TemporaryDirectory(prefix="lstm-test-state-")  # the server's own store, removed even after a kill
    full = {
        **os.environ,
        "LSTM_MODEL_REPOSITORY": str(repo),
        "LSTM_PORT": str(port),
        "LSTM_PROVIDER": "cpu",
        "LSTM_STATE_URL": f"sqlite://{state.name}/sequences.db",
        CONTROL_JOURNAL_ENV: f"{state.name}/control/journal.json",  # removed with it, even after a kill
        "TMPDIR": state.name,  # the folders it makes for its workers (metrics, the cores' board) too
        **(env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=ROOT, env=full, stdout=output, stderr=output, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, "server exited during start-up"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("server not ready within 60 s")
        yield url, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and any worker it left
        proc.wait()
        state.cleanup()


@contextlib.contextmanager
def app_client(settings: Settings, raise_server_exceptions: bool = True, **overrides: Any) -> Iterator[TestClient]:
    """A TestClient (lifespan entered) on an app with these settings changed."""
    app = create_app(settings.model_copy(update=overrides))
    with TestClient(app, raise_server_exceptions=raise_server_exceptions) as c:
        yield c
