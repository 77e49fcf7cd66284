"""End to end: the real server (`python -m service`, uvicorn) on 127.0.0.1 and a free port, over httpx."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import running_server


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[str]:
    with running_server(repo) as (url, proc):
        yield url
        proc.terminate()
        assert proc.wait(timeout=20) == 0  # SIGTERM: a clean exit


def test_real_server_predicts_streams_and_rejects(server: str, weather: np.ndarray) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        assert http.get("/model").json()["name"] == "tiny"
        seq = weather[:40].tolist()
        whole = http.post("/predict", json={"inputs": [seq]}).json()
        first = http.post("/predict", json={"inputs": [seq[:25]]}).json()
        rest = http.post("/predict", json={"inputs": [seq[25:]], "h0": first["hn"], "c0": first["cn"]}).json()
        np.testing.assert_allclose(first["outputs"][0] + rest["outputs"][0], whole["outputs"][0], atol=1e-5)
        np.testing.assert_allclose(rest["hn"], whole["hn"], atol=1e-5)
        bad = http.post("/predict", json={"inputs": []})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "inputs"]
        assert http.get("/health/ready").status_code == 200


def test_health_answers_while_the_model_works(server: str, weather: np.ndarray) -> None:
    """Inference runs off the event loop: a health check overtakes heavy predictions in flight."""
    import asyncio

    heavy = {"inputs": [np.tile(weather[:500], (4, 1)).tolist()] * 128}  # 128 sequences of 2,000 steps
    done: list[str] = []

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server, timeout=60) as http:

            async def predict() -> None:
                assert (await http.post("/predict", json=heavy)).status_code == 200
                done.append("predict")

            async def health() -> None:
                await asyncio.sleep(0.05)  # the predictions are in flight by now
                assert (await http.get("/health/live")).status_code == 200
                done.append("health")

            await asyncio.gather(*(predict() for _ in range(3)), health())

    asyncio.run(scenario())
    assert done[0] == "health", done
