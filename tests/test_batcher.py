"""Dynamic batching: merged calls give every request exactly what it gets alone."""

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from service.model.batch import Batch, merge
from service.model.engine import Engine
from service.pipeline.batcher import Batcher
from service.settings import Settings

from .conftest import ROOT, windows


class Recording:
    """The engine, with a record of each batch it ran."""

    def __init__(self, engine: Engine, gate: threading.Event | None = None) -> None:
        self.engine, self.spec, self.gate, self.calls = engine, engine.spec, gate, []

    def predict(self, batch: Batch):
        if self.gate is not None:
            self.gate.wait(10)  # hold the first call so that the others queue up behind it
        self.calls.append((batch.size, int(batch.lengths.max())))
        return self.engine.predict(batch)


@pytest.fixture(scope="module")
def engine(repo: Path) -> Engine:
    return Engine.load(repo / "tiny" / "1", provider="cpu")


def request(engine: Engine, seqs: list[np.ndarray], rng: np.random.Generator) -> Batch:
    h0 = (rng.standard_normal((2, len(seqs), 8)) * 0.5).astype(np.float32)
    c0 = (rng.standard_normal((2, len(seqs), 8)) * 0.5).astype(np.float32)
    return Batch([s.astype(np.float32) for s in seqs], h0, c0)


async def run_all(batcher: Batcher, batches: list[Batch]) -> list:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.predict(b) for b in batches))
    finally:
        batcher.stop()


def test_concurrent_requests_of_mixed_lengths_and_states_equal_each_alone(
    engine: Engine, weather: np.ndarray, rng: np.random.Generator
) -> None:
    batches = [
        request(engine, windows(weather, list(rng.integers(1, 60, rng.integers(1, 4))), rng), rng) for _ in range(40)
    ]
    rec = Recording(engine)
    answers = asyncio.run(run_all(Batcher(rec, max_batch_size=64), batches))  # type: ignore[arg-type]
    assert len(rec.calls) < len(batches), "nothing was batched"
    for batch, got in zip(batches, answers, strict=True):
        alone = engine.predict(batch)
        assert len(got) == len(alone)
        for g, a in zip(got, alone, strict=True):
            assert g.outputs.shape == a.outputs.shape  # its own steps, no padding
            np.testing.assert_allclose(g.outputs, a.outputs, rtol=0, atol=1e-5)
            np.testing.assert_allclose(g.hn, a.hn, rtol=0, atol=1e-5)
            np.testing.assert_allclose(g.cn, a.cn, rtol=0, atol=1e-5)


def test_limits_of_one_merged_call(engine: Engine, weather: np.ndarray, rng: np.random.Generator) -> None:
    gate = threading.Event()
    rec = Recording(engine, gate)
    short = [request(engine, windows(weather, [5, 5], rng), rng) for _ in range(6)]
    long = request(engine, windows(weather, [200], rng), rng)
    batcher = Batcher(rec, max_batch_size=6, max_merged_steps=60)  # type: ignore[arg-type]

    async def scenario() -> None:
        batcher.start()
        first = asyncio.ensure_future(batcher.predict(short[0]))
        await asyncio.sleep(0.05)  # the worker holds `first` at the gate; the rest queue up
        rest = [asyncio.ensure_future(batcher.predict(b)) for b in [*short[1:], long]]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *rest)
        batcher.stop()

    asyncio.run(scenario())
    assert rec.calls[0] == (2, 5)
    # At most 6 sequences and 60 steps a call: the 200-step sequence runs on its own.
    assert all((n <= 6 and n * t <= 60) or n == 1 for n, t in rec.calls)
    assert (1, 200) in rec.calls
    assert sum(n for n, _ in rec.calls) == 13


def test_a_failing_call_fails_its_requests_and_the_worker_goes_on(engine: Engine, rng: np.random.Generator) -> None:
    class Flaky:
        def __init__(self) -> None:
            self.calls, self.spec = 0, engine.spec

        def predict(self, batch: Batch):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("boom")
            return engine.predict(batch)

    batch = request(engine, [np.ones((3, 4), dtype=np.float32)], rng)
    batcher = Batcher(Flaky(), max_batch_size=1)  # type: ignore[arg-type]

    async def scenario() -> None:
        batcher.start()
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.predict(batch)
        assert len(await batcher.predict(batch)) == 1
        batcher.stop()

    asyncio.run(scenario())


def test_merge_keeps_order_and_lengths() -> None:
    z1, o2 = np.zeros((2, 1, 8), np.float32), np.ones((2, 2, 8), np.float32)
    a = Batch([np.ones((2, 4), np.float32)], z1, z1)
    b = Batch([np.full((5, 4), 2, np.float32), np.full((3, 4), 3, np.float32)], o2, o2)
    m = merge([a, b])
    assert m.padded().shape == (3, 5, 4) and m.lengths.tolist() == [2, 5, 3]
    x = m.padded()
    assert (x[0, 2:] == 0).all() and (x[1] == 2).all() and m.h0[:, 1:].all() and not m.h0[:, 0].any()


def test_the_service_never_imports_torch(repo: Path) -> None:
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from service.app import create_app\n"
        "from service.settings import Settings\n"
        f"s = Settings(model_repository={str(repo)!r}, provider='cpu')\n"
        "with TestClient(create_app(s)) as c:\n"
        "    assert c.post('/predict', json={'inputs': [[[1, 2, 3, 4]]], 'explain': True}).status_code == 200\n"
        "import service.__main__\n"
        "assert 'torch' not in sys.modules, 'the service imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_workers_and_threads_share_the_cores() -> None:
    s = Settings(workers=2)
    assert s.intra_op_threads is not None and s.intra_op_threads >= 1
    auto = Settings()
    assert auto.workers is not None and 1 <= auto.workers <= 4
    assert Settings(workers=1, intra_op_threads=3).intra_op_threads == 3
