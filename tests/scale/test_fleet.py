"""make scale-test: replicas of the service behind HAProxy, sharing one Valkey (deploy/fleet.py). Many
sequences stream through the load balancer, their chunks landing on any replica, with returned states and
as server-held sequences; one replica is killed in the middle; every stream still equals one whole call,
and the only requests that failed are those in flight on the killed replica, which the client retried."""

import asyncio
import re
import signal
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from lstm_client import AsyncClient

from deploy.fleet import HEALTH_CHECK_MS, Fleet, fleet
from service.pipeline.sequences import LEASE_S

from ..conftest import windows

pytestmark = pytest.mark.scale
REPLICAS = 3
STREAMS = 12  # of each kind: returned states, server-held
STEPS, CHUNK = 600, 20  # 30 chunks per stream
KILL_AFTER = 300  # answered chunks (of 720) before a replica is killed


class Recorder(httpx.AsyncHTTPTransport):
    """Every attempt the client makes: when, and what came of it (a status, or no answer at all)."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[tuple[float, int | None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            answer = await super().handle_async_request(request)
        except httpx.TransportError:
            self.attempts.append((time.monotonic(), None))
            raise
        self.attempts.append((time.monotonic(), answer.status_code))
        return answer


def served(url: str) -> int:
    """Inference requests a replica has answered with 200, from its own metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    pattern = r'lstm_requests_total\{route="/predict",status="200"\} ([0-9.e+]+)'
    return int(sum(float(v) for v in re.findall(pattern, text)))


@pytest.fixture
def replicas() -> Iterator[Fleet]:
    with fleet(REPLICAS) as f:
        yield f


@pytest.mark.parametrize(
    "stop",
    [signal.SIGKILL, signal.SIGTERM],
    ids=["killed", "stopped"],  # a crash, and a graceful stop (a rolling update, a scale-down)
)
def test_streams_finish_exactly_when_a_replica_goes(replicas: Fleet, weather: np.ndarray, stop: signal.Signals) -> None:
    sequences = windows(weather, [STEPS] * (2 * STREAMS), np.random.default_rng(13))
    answered = 0
    killed_at: list[float] = []
    before = {r.url: served(r.url) for r in replicas.replicas}
    doomed = replicas.replicas[1]
    served_by_doomed: list[int] = []

    def one_more() -> None:
        nonlocal answered
        answered += 1
        if answered == KILL_AFTER:
            served_by_doomed.append(served(doomed.url) - before[doomed.url])
            doomed.kill(stop)
            killed_at.append(time.monotonic())

    async def stream(client: AsyncClient, x: np.ndarray, held: bool) -> np.ndarray:
        parts = []
        if held:
            sequence = client.sequence()
            for i in range(0, STEPS, CHUNK):
                parts.append(await sequence.send(x[i : i + CHUNK], end=i + CHUNK == STEPS))
                one_more()
        else:
            async with await client.stream() as carried:
                for i in range(0, STEPS, CHUNK):
                    parts.append(await carried.send(x[i : i + CHUNK]))
                    one_more()
        return np.concatenate(parts)

    async def scenario() -> tuple[list[np.ndarray], list[np.ndarray], Recorder]:
        async with AsyncClient(replicas.url) as client:
            whole = [(await client.predict([x])).outputs[0] for x in sequences]
            recorder = Recorder()
            await client.http.aclose()
            client.http = httpx.AsyncClient(base_url=replicas.url, transport=recorder, timeout=30)
            streamed = await asyncio.gather(*(stream(client, x, k % 2 == 1) for k, x in enumerate(sequences)))
        return whole, streamed, recorder

    whole, streamed, recorder = asyncio.run(scenario())
    for k, (one_call, chunked) in enumerate(zip(whole, streamed, strict=True)):
        np.testing.assert_allclose(chunked, one_call, rtol=0, atol=1e-5, err_msg=f"stream {k}")

    (kill,) = killed_at
    failed = [(t, status) for t, status in recorder.attempts if status is None or status >= 500]
    # Only requests in flight on the replica that went failed: at most one per stream, all at the moment it
    # went (before HAProxy's health checks took it out); nothing failed before it or after.
    assert len(failed) <= 2 * STREAMS, failed
    if stop == signal.SIGTERM:  # a graceful stop drops nothing: HAProxy sees readiness drop, in-flight work ends
        assert failed == [], failed
    window = kill + 2 * HEALTH_CHECK_MS / 1000 + 1.0
    assert all(kill <= t <= window for t, _ in failed), (kill, failed)
    busy = [t for t, status in recorder.attempts if status == 409]  # a retry waiting for a dead claim to lapse
    assert all(t >= kill for t in busy)
    assert not [s for _, s in recorder.attempts if s is not None and 400 <= s < 500 and s != 409]
    # Every replica served chunks: the one that went before it went, the others throughout
    assert served_by_doomed[0] > 0
    for replica in (r for r in replicas.replicas if r is not doomed):
        assert served(replica.url) - before[replica.url] > 0


def test_a_chunk_on_a_replica_killed_mid_chunk_is_retried_once_its_claim_lapses(
    replicas: Fleet, weather: np.ndarray
) -> None:
    """The worst moment: a replica dies holding a server-held sequence's claim. The client's retry on another
    replica is told to wait (409, Retry-After) until the claim lapses (LEASE_S), then runs, applied once."""
    import threading

    import redis

    x = np.concatenate([weather] * 7)[:9_000]  # a long chunk: it is still running when its replica dies
    first, big = x[:20], x[20:]
    doomed = replicas.replicas[2]
    store = redis.Redis.from_url(replicas.store)
    with httpx.Client(base_url=replicas.url, timeout=30) as lb:
        whole = np.asarray(lb.post("/predict", json={"inputs": [x.tolist()]}).json()["outputs"][0])
        ref = {"id": "dies-mid-chunk", "start": True, "chunk": 0}
        got = lb.post("/predict", json={"inputs": [first.tolist()], "sequence": ref}).json()["outputs"][0]
    chunk = {"inputs": [big.tolist()], "sequence": {"id": "dies-mid-chunk", "chunk": 1}}
    lost: list[BaseException] = []

    def doomed_request() -> None:
        try:
            httpx.post(f"{doomed.url}/predict", json=chunk, timeout=30)
        except httpx.TransportError as e:
            lost.append(e)

    sender = threading.Thread(target=doomed_request)
    sender.start()
    (key,) = store.keys("*dies-mid-chunk*")
    deadline = time.monotonic() + 10
    while not store.hexists(key, "token"):  # the doomed replica claimed the sequence: its chunk is running
        assert time.monotonic() < deadline, "the chunk never started"
        time.sleep(0.001)
    doomed.kill()
    sender.join(10)
    assert lost, "the killed replica answered"

    async def retry() -> np.ndarray:
        recorder = Recorder()
        async with AsyncClient(replicas.url, retries=5) as client:
            await client.http.aclose()
            client.http = httpx.AsyncClient(base_url=replicas.url, transport=recorder, timeout=30)
            # the same chunk, numbered 1, as the client sends a held sequence's (raises unless answered 200)
            answer = await client._infer(
                chunk["inputs"], None, None, {**chunk["sequence"], "start": False, "end": False}
            )
        waits = [s for _, s in recorder.attempts if s == 409]
        assert 1 <= len(waits) <= LEASE_S + 1  # waited for the dead claim (a Retry-After of 1 s or more each)
        return answer.outputs[0]

    began = time.monotonic()
    rest = asyncio.run(retry())
    assert time.monotonic() - began < LEASE_S + 2  # the lease, and a second of Retry-After's rounding
    np.testing.assert_allclose(np.concatenate([got, rest]), whole, rtol=0, atol=1e-5)
