"""Shared fixtures: one tiny model trained on the committed data and exported, and a client serving it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from training.export import export
from training.train import TrainConfig, train

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
