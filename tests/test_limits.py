"""Limits and overload: total values, the bounded queue (503 + Retry-After), the deadline (504)."""

import asyncio
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.model.batch import Batch
from service.model.engine import Engine
from service.pipeline.batcher import Batcher
from service.pipeline.dataplane import Admission, DataPlane
from service.pipeline.errors import DeadlineExceeded, Overloaded
from service.pipeline.rules import Limits
from service.protocols.rest import CODEC
from service.settings import Settings

from .conftest import app_client, running_server

ROW = [0.0, 10.0, 5.0, 3.0]
LIMITS = Limits.from_settings(
    Settings(max_batch_size=16, max_steps=600, explain_max_values=4096, max_total_values=10**6, max_body_bytes=1 << 20)
)


def test_total_values_limit_is_a_422(settings: Settings) -> None:
    with app_client(settings, max_total_values=100) as c:
        ok = c.post("/predict", json={"inputs": [[ROW] * 25]})  # 100 values
        assert ok.status_code == 200
        r = c.post("/predict", json={"inputs": [[ROW] * 20, [ROW] * 6]})  # 104 values
        assert r.status_code == 422
        err = r.json()["detail"][0]
        assert err["loc"] == ["body", "inputs"] and err["type"] == "too_long" and "at most 100 values" in err["msg"]


class Gated:
    """An engine whose calls wait at a gate; counts what ran."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.spec, self.gate, self.ran = engine, engine.spec, threading.Event(), 0

    def predict(self, batch: Batch):
        self.gate.wait(10)
        self.ran += 1
        return self.engine.predict(batch)


@pytest.fixture(scope="module")
def engine(repo: Path) -> Engine:
    return Engine.load(repo / "tiny" / "1", provider="cpu")


def body(steps: int = 3) -> bytes:
    import orjson

    return orjson.dumps({"inputs": [[ROW] * steps]})


def predicting(plane: DataPlane):
    """A /predict body in, its answer out, through the plane with the REST codec."""

    async def call(raw: bytes) -> bytes:
        async def read() -> bytes:
            return raw

        return await plane.serve(CODEC, read)

    return call


def test_a_full_queue_refuses_at_once(engine: Engine) -> None:
    gated = Gated(engine)
    batcher = Batcher(gated)  # type: ignore[arg-type]
    plane = DataPlane(gated, LIMITS, batcher, Admission(2), timeout_s=10, inline_max_steps=0)  # type: ignore[arg-type]
    predictor = predicting(plane)

    async def scenario() -> None:
        batcher.start()
        held = [asyncio.ensure_future(predictor(body())) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await predictor(body())  # refused without waiting for the gate
        gated.gate.set()
        assert all(isinstance(a, bytes) for a in await asyncio.gather(*held))
        assert isinstance(await predictor(body()), bytes)  # admitted again once there is room
        batcher.stop()

    asyncio.run(scenario())


def test_deadline_drops_queued_work(engine: Engine) -> None:
    gated = Gated(engine)
    batcher = Batcher(gated, max_batch_size=1)  # type: ignore[arg-type]
    plane = DataPlane(gated, LIMITS, batcher, Admission(8), timeout_s=0.2, inline_max_steps=0)  # type: ignore[arg-type]
    predictor = predicting(plane)

    async def scenario() -> None:
        batcher.start()
        first = asyncio.ensure_future(predictor(body()))  # runs, held at the gate past its deadline
        await asyncio.sleep(0.02)
        with pytest.raises(DeadlineExceeded):
            await predictor(body())  # queued behind it, gives up at 0.2 s
        with pytest.raises(DeadlineExceeded):
            await first
        gated.gate.set()
        await asyncio.sleep(0.2)
        batcher.stop()

    asyncio.run(scenario())
    assert gated.ran == 1, "the expired, still-queued request must not reach the model"
    assert batcher.depth == 0


def heavy_explain() -> dict:
    """Explaining 2 x 8,000 steps of the tiny model takes most of a second in the numpy reference."""
    return {"inputs": [np.tile(ROW, (8000, 1)).tolist()] * 2, "explain": True}


def test_http_503_with_retry_after_and_504(repo: Path) -> None:
    env = {"LSTM_WORKERS": "1", "LSTM_MAX_QUEUE": "1", "LSTM_EXPLAIN_MAX_VALUES": "300000"}
    with running_server(repo, env) as (url, proc):

        async def scenario() -> tuple[httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                slow = asyncio.ensure_future(http.post("/predict", json=heavy_explain()))
                await asyncio.sleep(0.3)  # admitted and running by now
                refused = await http.post("/predict", json={"inputs": [[ROW]]})
                return await slow, refused

        slow, refused = asyncio.run(scenario())
        assert slow.status_code == 200
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        proc.terminate()
        proc.wait(20)
    with running_server(repo, {"LSTM_WORKERS": "1", "LSTM_REQUEST_TIMEOUT_S": "0.05", **env}) as (url, _):
        late = httpx.post(f"{url}/predict", json=heavy_explain(), timeout=30)
        assert late.status_code == 504 and "deadline" in late.json()["detail"]
        assert httpx.post(f"{url}/predict", json={"inputs": [[ROW]]}).status_code == 200
