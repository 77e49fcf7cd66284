"""Server-held sequences across real server processes: two servers sharing one store, a restart mid-stream,
the store going down and coming back, and a thousand sequences at once."""

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from .conftest import running_server, windows
from .test_state import NEEDS_SERVER, SERVER, free_port, valkey

STEPS, CUTS = 24, [0, 7, 8, 19, 24]


def chunk(url: str, x: np.ndarray, seq: Any, k: int, client: httpx.Client | None = None) -> httpx.Response:
    a, b = CUTS[k], CUTS[k + 1]
    body = {"inputs": [x[a:b].tolist()], "sequence": {"id": seq, "start": k == 0, "end": b == STEPS}}
    return (client or httpx).post(f"{url}/predict", json=body, timeout=30)


def whole(url: str, x: np.ndarray) -> np.ndarray:
    return np.asarray(httpx.post(f"{url}/predict", json={"inputs": [x.tolist()]}, timeout=30).json()["outputs"][0])


@pytest.fixture(scope="module")
def store_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The shared stores two servers can point at: a SQLite file, and Valkey/Redis where installed."""
    folder = tmp_path_factory.mktemp("stores")
    urls = {"sqlite": f"sqlite:///{folder}/sequences.db"}
    if SERVER is None:
        yield urls
        return
    with valkey(folder) as url:
        yield {**urls, "valkey": url}


@pytest.mark.parametrize("store", ["sqlite", pytest.param("valkey", marks=NEEDS_SERVER)])
def test_two_servers_take_alternate_chunks_of_a_hundred_sequences(
    repo: Path, store_urls: dict[str, str], weather: np.ndarray, store: str
) -> None:
    env = {"LSTM_WORKERS": "2", "LSTM_STATE_URL": store_urls[store]}
    xs = windows(weather, [STEPS] * 100, np.random.default_rng(11))
    with running_server(repo, env) as (one, _), running_server(repo, env) as (two, _):
        expected = [whole(one, x) for x in xs]
        got: list[list[Any]] = [[] for _ in xs]
        with httpx.Client() as a, httpx.Client() as b:
            for k in range(len(CUTS) - 1):
                for i, x in enumerate(xs):
                    url, client = ((one, a), (two, b))[(i + k) % 2]  # every chunk on the other server
                    r = chunk(url, x, f"{store}-{i}", k, client)
                    assert r.status_code == 200, r.text
                    got[i] += r.json()["outputs"][0]
    for i in range(len(xs)):
        np.testing.assert_allclose(got[i], expected[i], rtol=0, atol=1e-5)


@pytest.mark.parametrize("store", ["sqlite", pytest.param("valkey", marks=NEEDS_SERVER)])
def test_a_restart_mid_stream_loses_nothing(
    repo: Path, store_urls: dict[str, str], weather: np.ndarray, store: str
) -> None:
    env = {"LSTM_WORKERS": "1", "LSTM_STATE_URL": store_urls[store]}
    x = windows(weather, [STEPS], np.random.default_rng(12))[0]
    got: list[Any] = []
    with running_server(repo, env) as (url, proc):
        expected = whole(url, x)
        for k in range(2):
            got += chunk(url, x, f"restart-{store}", k).json()["outputs"][0]
        proc.terminate()
        proc.wait(30)
    with running_server(repo, env) as (url, _):
        for k in range(2, len(CUTS) - 1):
            r = chunk(url, x, f"restart-{store}", k)
            assert r.status_code == 200, r.text
            got += r.json()["outputs"][0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@NEEDS_SERVER
def test_the_store_down_is_a_503_and_then_it_recovers(repo: Path, weather: np.ndarray) -> None:
    port = free_port()
    x = windows(weather, [STEPS], np.random.default_rng(13))[0]
    with (
        tempfile.TemporaryDirectory() as folder,
        running_server(repo, {"LSTM_WORKERS": "1", "LSTM_STATE_URL": f"redis://127.0.0.1:{port}/0"}) as (url, _),
    ):
        r = chunk(url, x, "down", 0)
        assert r.status_code == 503 and r.headers["retry-after"] and "cannot be reached" in r.json()["detail"]
        assert str(port) not in r.text  # where the store is stays in the server's log
        assert httpx.post(f"{url}/predict", json={"inputs": [x.tolist()]}).status_code == 200  # the rest serves on
        with valkey(Path(folder), port):
            got = []
            for k in range(len(CUTS) - 1):
                r = chunk(url, x, "down", k)
                assert r.status_code == 200, r.text
                got += r.json()["outputs"][0]
            np.testing.assert_allclose(got, whole(url, x), rtol=0, atol=1e-5)
            assert chunk(url, x, "again", 0).status_code == 200
        r = chunk(url, x, "again", 1)  # down again, mid-sequence: refused, nothing answered from nowhere
        assert r.status_code == 503


def test_a_thousand_live_sequences_chunks_in_parallel(repo: Path, weather: np.ndarray) -> None:
    xs = windows(weather, [STEPS] * 1000, np.random.default_rng(14))
    with running_server(repo, {"LSTM_WORKERS": "2"}) as (url, _):
        expected = [whole(url, x) for x in xs[:20]]

        async def run() -> list[list[Any]]:
            got: list[list[Any]] = [[] for _ in xs]
            limits = httpx.Limits(max_connections=32)
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
                for k, (a, b) in enumerate([(0, 10), (10, STEPS)]):  # every sequence's first chunk at once, then
                    # every second chunk
                    bodies = [
                        {"inputs": [x[a:b].tolist()], "sequence": {"id": i + 1, "start": k == 0, "end": b == STEPS}}
                        for i, x in enumerate(xs)
                    ]
                    answers = await asyncio.gather(*(client.post("/predict", json=body) for body in bodies))
                    for i, r in enumerate(answers):
                        assert r.status_code == 200, r.text
                        got[i] += r.json()["outputs"][0]
            return got

        got = asyncio.run(run())
    for i in range(20):
        np.testing.assert_allclose(got[i], expected[i], rtol=0, atol=1e-5)


def test_two_chunks_of_one_sequence_never_run_at_once(repo: Path, weather: np.ndarray) -> None:
    """Chunks sent together: each is run alone or refused with 409, and none is applied twice or lost."""
    x = np.tile(windows(weather, [1000], np.random.default_rng(15))[0], (8, 1))  # 8,000 steps: tens of ms
    with running_server(repo, {"LSTM_WORKERS": "2"}) as (url, _):
        assert (
            httpx.post(
                f"{url}/predict", json={"inputs": [x[:5].tolist()], "sequence": {"id": "once", "start": True}}
            ).status_code
            == 200
        )

        async def together() -> list[int]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                body = {"inputs": [x.tolist()], "sequence": {"id": "once"}}
                answers = await asyncio.gather(*(client.post("/predict", json=body) for _ in range(6)))
            return [r.status_code for r in answers]

        statuses = asyncio.run(together())
        assert set(statuses) <= {200, 409} and 409 in statuses and 200 in statuses, statuses
        # The states now are those after the start chunk and exactly as many whole chunks as were answered.
        after = httpx.post(f"{url}/predict", json={"inputs": [x[:3].tolist()], "sequence": {"id": "once"}}).json()
        chunks = [x[:5]] + [x] * statuses.count(200) + [x[:3]]
        state: dict[str, Any] = {}
        for part in chunks:
            answer = httpx.post(f"{url}/predict", json={"inputs": [part.tolist()], **state}, timeout=60).json()
            state = {"h0": answer["hn"], "c0": answer["cn"]}
        np.testing.assert_allclose(after["outputs"], answer["outputs"], rtol=0, atol=1e-5)
