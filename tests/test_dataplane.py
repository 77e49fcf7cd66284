"""The shared request path: where a request's model call runs (on the event loop, alone, or merged by the
batcher), and that the answer is the same either way."""

import asyncio
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.model.batch import Batch, SequenceResult
from service.model.engine import Engine
from service.pipeline.batcher import Batcher
from service.pipeline.dataplane import Admission, DataPlane, inline_limit
from service.pipeline.errors import InvalidInput, Overloaded
from service.pipeline.rules import Limits
from service.protocols import rest
from service.server import protocol
from service.settings import Settings

from .conftest import free_port


class Threads:
    """The engine, recording which thread ran each call and how many sequences it held; a call of
    ``held_steps`` steps waits for ``gate``."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.calls = engine, []
        self.spec = engine.spec
        self.gate, self.held_steps = threading.Event(), -1

    def predict(self, batch: Batch) -> list[SequenceResult]:
        if batch.steps == self.held_steps:
            self.gate.wait(10)
        self.calls.append((threading.current_thread().name, batch.size))
        return self.engine.predict(batch)


@pytest.fixture
def plane(repo: Path, settings: Settings) -> DataPlane:
    engine = Threads(Engine.load(repo / "tiny" / "1", provider="cpu"))
    return DataPlane(engine, Limits.from_settings(settings), None, Admission(64), 10.0, 64)  # type: ignore[arg-type]


def body(steps: int, seed: int) -> bytes:
    x = np.random.default_rng(seed).standard_normal((1, steps, 4)).round(3)
    doc = {"inputs": x, "h0": np.full((1, 2, 8), 0.1), "c0": np.full((1, 2, 8), -0.2)}
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


async def serve(plane: DataPlane, bodies: list[bytes]) -> list[dict]:
    plane.batcher = Batcher(plane.engine)  # a fresh one for each run: a thread starts once
    plane.batcher.start()
    try:

        async def one(b: bytes) -> dict:
            async def read() -> bytes:
                return b

            return orjson.loads(await plane.serve(rest.CODEC, read))

        return await asyncio.gather(*(one(b) for b in bodies))
    finally:
        plane.batcher.stop()


def test_a_lone_small_request_runs_on_the_event_loop(plane: DataPlane) -> None:
    (answer,) = asyncio.run(serve(plane, [body(32, 0)]))
    assert plane.engine.calls == [(threading.main_thread().name, 1)]  # type: ignore[attr-defined]
    assert len(answer["outputs"][0]) == 32


@pytest.mark.parametrize("lone", [False, True], ids=["others-may-come", "alone-on-its-server"])
def test_a_lone_request_takes_a_turn_of_the_loop_only_when_others_may_be_on_their_way(
    plane: DataPlane, lone: bool
) -> None:
    """The turn lets requests that arrived with this one be admitted (and batched with it). When its server
    has no other request in progress, none can be on its way, and the request runs at once, without it."""
    plane.admission.lone = lambda: lone
    order: list[str] = []
    engine: Threads = plane.engine  # type: ignore[assignment]
    predict = engine.predict
    engine.predict = lambda batch: order.append("model") or predict(batch)  # type: ignore[method-assign]

    async def read() -> bytes:  # something else becomes ready while the request is read
        asyncio.get_running_loop().call_soon(order.append, "another callback")
        return body(8, 0)

    async def run() -> None:
        await plane.serve(rest.CODEC, read)
        await asyncio.sleep(0)

    asyncio.run(run())
    assert engine.calls == [(threading.main_thread().name, 1)]  # inline either way
    assert order == (["model", "another callback"] if lone else ["another callback", "model"])


def test_requests_that_arrive_together_are_merged_by_the_batcher(plane: DataPlane) -> None:
    bodies = [body(32, seed) for seed in range(8)]
    together = asyncio.run(serve(plane, bodies))
    calls = list(plane.engine.calls)  # type: ignore[attr-defined]
    assert {name for name, _ in calls} == {"lstm-batcher"} and max(size for _, size in calls) > 1
    alone = []
    for b in bodies:
        alone += asyncio.run(serve(plane, [b]))  # each on the event loop
    assert plane.engine.calls[len(calls) :] == [(threading.main_thread().name, 1)] * len(bodies)  # type: ignore[attr-defined]
    for a, b in zip(together, alone, strict=True):
        for key in ("outputs", "hn", "cn"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("steps", "inline_max_steps"), [(65, 64), (1, 0)], ids=["too-long", "inline-off"])
def test_a_lone_request_over_the_inline_limit_goes_to_the_batcher(
    plane: DataPlane, steps: int, inline_max_steps: int
) -> None:
    plane.inline_max_steps = inline_max_steps
    asyncio.run(serve(plane, [body(steps, 0)]))
    assert plane.engine.calls == [("lstm-batcher", 1)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("lone", [False, True], ids=["others-may-come", "alone-on-its-server"])
def test_a_lone_request_waits_its_turn_while_the_batcher_works(plane: DataPlane, lone: bool) -> None:
    """Admitted alone, but the model is busy with other work (a stream's chunk from another model's
    request, say): it queues for the batcher rather than run beside it on the event loop, even when its
    server has no other request."""
    plane.admission.lone = lambda: lone
    engine: Threads = plane.engine  # type: ignore[assignment]
    engine.held_steps = 7

    async def run() -> None:
        plane.batcher = Batcher(plane.engine)  # type: ignore[arg-type]
        plane.batcher.start()
        try:
            x = np.zeros((7, 4), dtype=np.float32)
            busy = asyncio.ensure_future(plane.batcher.predict(Batch([x], *engine.spec.zero_states(1))))
            while plane.batcher.depth == 0:
                await asyncio.sleep(0.01)

            async def read() -> bytes:
                return body(5, 0)

            lone = asyncio.ensure_future(plane.serve(rest.CODEC, read))
            await asyncio.sleep(0.1)
            assert not lone.done()  # queued behind the held call, not run on the loop
            engine.gate.set()
            await busy
            await lone
        finally:
            plane.batcher.stop()

    asyncio.run(run())
    assert engine.calls == [("lstm-batcher", 1), ("lstm-batcher", 1)]


def test_the_inline_limit_follows_what_the_model_costs(plane: DataPlane) -> None:
    engine = plane.engine.engine  # type: ignore[attr-defined]
    assert inline_limit(engine, 0) == 0
    assert inline_limit(engine, 64, budget_s=10.0) == 64
    assert 0 <= inline_limit(engine, 64, budget_s=1e-7) < 64  # a model too slow for the budget gets less


def test_the_app_tells_the_request_path_when_a_request_is_alone_on_its_server(settings: Settings) -> None:
    """From uvicorn's requests in progress; not with gRPC on, whose calls come in apart from them."""
    with TestClient(create_app(settings)) as c:
        assert c.app.state.registry.admission.lone is protocol.lone_request  # type: ignore[attr-defined]
    with TestClient(create_app(settings.model_copy(update={"grpc_port": free_port()}))) as c:
        lone = c.app.state.registry.admission.lone  # type: ignore[attr-defined]
        assert lone is not protocol.lone_request and lone() is False


def test_admission_posts_its_count_for_the_other_workers_and_a_refusal_posts_nothing() -> None:
    posted: list[int] = []
    admission = Admission(2, post=posted.append)
    admission.enter()
    admission.enter()
    with pytest.raises(Overloaded):
        admission.enter()
    admission.leave()
    admission.leave()
    assert posted == [1, 2, 1, 0]


def test_every_request_posts_its_admission_and_its_end_answered_or_refused(plane: DataPlane) -> None:
    posted: list[int] = []
    plane.admission.post = posted.append
    asyncio.run(serve(plane, [body(3, 0)]))

    async def invalid() -> bytes:
        return b"{}"

    with pytest.raises(InvalidInput):
        asyncio.run(plane.serve(rest.CODEC, invalid))
    assert posted == [1, 0, 1, 0]
