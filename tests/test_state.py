"""Server-held sequences' stores (service/state): each store keeps the same semantics, and the real Valkey or
Redis server (started here) is one of them."""

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from service.state.embedded import EmbeddedStore
from service.state.shared import SharedStore
from service.state.store import (
    BusySequence,
    Claim,
    EndedSequence,
    ExpiredSequence,
    OutOfOrder,
    ReusedChunk,
    SequenceStore,
    StoreFull,
    StoreUnavailable,
    Terms,
    UnknownSequence,
)

SERVER = shutil.which("valkey-server") or shutil.which("redis-server")
NEEDS_SERVER = pytest.mark.skipif(
    SERVER is None, reason="no valkey-server or redis-server on PATH (make test installs Debian's redis-server)"
)
TERMS = Terms(idle_s=0.4, max_sequences=3, lease_s=1.0)
_TOKENS = iter(range(10**9))


def tok() -> str:
    """A caller's claim token, new each time."""
    return f"t{next(_TOKENS)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def valkey(folder: Path, port: int | None = None) -> Iterator[str]:
    """A Valkey or Redis server on 127.0.0.1, in memory only; its URL."""
    assert SERVER is not None
    port = port or free_port()
    cmd = [SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            assert time.monotonic() < deadline and proc.poll() is None, "the store did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if SERVER is None:
        pytest.skip("no valkey-server or redis-server on PATH (make test installs Debian's redis-server)")
    with valkey(tmp_path_factory.mktemp("valkey")) as url:
        yield url


Opener = Callable[[Terms], SequenceStore]


@pytest.fixture(params=["embedded", pytest.param("shared", marks=NEEDS_SERVER)])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "embedded":
        return lambda terms: EmbeddedStore(tmp_path / "sequences.db", terms)
    url = request.getfixturevalue("valkey_url")
    prefix = f"test{os.urandom(4).hex()}:"  # each test its own keys on the one server

    def shared(terms: Terms) -> SequenceStore:
        store = SharedStore(url, terms)
        store.prefix = prefix
        return store

    return shared


@contextlib.asynccontextmanager
async def opened(opener: Opener, terms: Terms = TERMS) -> AsyncIterator[SequenceStore]:
    store = opener(terms)
    try:
        yield store
    finally:
        await store.close()


def states(seed: int) -> bytes:
    """h and c as a model would hand them over, including values that text would round."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(2 * 2 * 64).astype(np.float32)
    a[:4] = [np.float32(1 / 3), np.finfo(np.float32).tiny, -0.0, np.nextafter(np.float32(1), np.float32(2))]
    return a.tobytes()


def test_a_sequence_starts_goes_on_and_ends(opener: Opener) -> None:
    async def run() -> None:
        async with opened(opener) as store:
            claim = await store.claim("m:a", start=True, token=tok())
            assert claim.states is None
            await store.keep(claim, states(1))
            for seed in (2, 3):
                claim = await store.claim("m:a", start=False, token=tok())
                assert claim.states == states(seed - 1)  # bit for bit
                await store.keep(claim, states(seed))
            claim = await store.claim("m:a", start=False, token=tok())
            await store.drop(claim)
            with pytest.raises(EndedSequence, match=r"^ended$"):
                await store.claim("m:a", start=False, token=tok())
            await asyncio.sleep(TERMS.idle_s + 0.1)
            with pytest.raises(UnknownSequence, match=r"^unknown$"):  # then forgotten
                await store.claim("m:a", start=False, token=tok())

    asyncio.run(run())


def test_numbered_chunks_run_once_and_a_retry_of_the_last_replays_it(opener: Opener) -> None:
    """A client that never got an answer sends the chunk again: it is answered from the states before it,
    and the sequence is not moved on twice."""

    async def run() -> None:
        async with opened(opener) as store:
            await store.keep(await store.claim("m:n", start=True, token=tok(), chunk=0), states(1))
            claim = await store.claim("m:n", start=False, token=tok(), chunk=1)
            assert claim.states == states(1) and not claim.replay
            await store.keep(claim, states(2))  # its answer is lost on the way
            again = await store.claim("m:n", start=False, token=tok(), chunk=1)
            assert again.replay and again.states == states(1)  # the states it ran from, bit for bit
            with pytest.raises(ReusedChunk):  # the same number with other inputs is no retry
                await store.claim("m:n", start=False, token=tok(), chunk=1, inputs=b"other")
            for wrong in (0, 3, 7):
                with pytest.raises(OutOfOrder) as refused:
                    await store.claim("m:n", start=False, token=tok(), chunk=wrong)
                assert refused.value.expected == 2
            claim = await store.claim("m:n", start=False, token=tok(), chunk=2)  # nothing held by the replay
            assert claim.states == states(2) and not claim.replay
            await store.drop(claim)  # the end, whose answer is lost too
            last = await store.claim("m:n", start=False, token=tok(), chunk=2)
            assert last.replay and last.states == states(2)
            with pytest.raises(EndedSequence):
                await store.claim("m:n", start=False, token=tok(), chunk=3)
            with pytest.raises(EndedSequence):
                await store.claim("m:n", start=False, token=tok())
            restart = await store.claim("m:n", start=True, token=tok(), chunk=0)  # a start is always a start
            assert restart.states is None and not restart.replay
            await store.keep(restart, states(5))
            with pytest.raises(OutOfOrder) as refused:
                await store.claim("m:n", start=False, token=tok(), chunk=2)
            assert refused.value.expected == 1
            unnumbered = await store.claim("m:n", start=False, token=tok())  # numbers are the client's choice
            assert unnumbered.states == states(5)
            await store.keep(unnumbered, states(6))
            assert (await store.claim("m:n", start=False, token=tok(), chunk=2)).states == states(6)  # still counted

    asyncio.run(run())


def test_a_replay_waits_while_its_first_attempt_still_runs(opener: Opener) -> None:
    async def run() -> None:
        async with opened(opener) as store:
            await store.keep(await store.claim("m:r", start=True, token=tok(), chunk=0), states(1))
            first = await store.claim("m:r", start=False, token=tok(), chunk=1)
            with pytest.raises(BusySequence):  # the retry came before the first attempt finished
                await store.claim("m:r", start=False, token=tok(), chunk=1)
            await store.release(first)  # the first attempt failed: nothing was applied
            claim = await store.claim("m:r", start=False, token=tok(), chunk=1)
            assert not claim.replay and claim.states == states(1)  # so the retry is applied, once

    asyncio.run(run())


def test_unknown_without_a_start_and_a_start_restarts(opener: Opener) -> None:
    async def run() -> None:
        async with opened(opener) as store:
            with pytest.raises(UnknownSequence):
                await store.claim("m:new", start=False, token=tok())
            claim = await store.claim("m:b", start=True, token=tok())
            await store.keep(claim, states(1))
            claim = await store.claim("m:b", start=True, token=tok())
            assert claim.states is None  # a start begins from no states
            await store.keep(claim, states(2))
            assert (await store.claim("m:b", start=False, token=tok())).states == states(2)

    asyncio.run(run())


def test_one_chunk_at_a_time_and_a_failed_chunk_changes_nothing(opener: Opener) -> None:
    async def run() -> None:
        async with opened(opener) as store:
            first = await store.claim("m:c", start=True, token=tok())
            with pytest.raises(BusySequence, match=r"^busy$"):
                await store.claim("m:c", start=True, token=tok())
            await store.release(first)  # the first chunk failed: the sequence was never started
            with pytest.raises(UnknownSequence):
                await store.claim("m:c", start=False, token=tok())
            claim = await store.claim("m:c", start=True, token=tok())
            await store.keep(claim, states(1))
            claim = await store.claim("m:c", start=False, token=tok())
            with pytest.raises(BusySequence):
                await store.claim("m:c", start=False, token=tok())
            await store.release(claim)
            assert (await store.claim("m:c", start=False, token=tok())).states == states(1)

    asyncio.run(run())


def test_a_lapsed_claim_cannot_store_over_a_newer_one(opener: Opener) -> None:
    async def run() -> None:
        async with opened(opener, Terms(idle_s=5, max_sequences=3, lease_s=0.2)) as store:
            claim = await store.claim("m:d", start=True, token=tok())
            await store.keep(claim, states(1))
            stale = await store.claim("m:d", start=False, token=tok())
            await asyncio.sleep(0.3)
            fresh = await store.claim("m:d", start=False, token=tok())  # the stale claim lapsed
            with pytest.raises(BusySequence):
                await store.keep(stale, states(9))
            await store.keep(fresh, states(2))
            assert (await store.claim("m:d", start=False, token=tok())).states == states(2)

    asyncio.run(run())


def test_an_idle_sequence_expires_and_says_so_then_is_forgotten(opener: Opener) -> None:
    async def run() -> None:
        async with opened(opener) as store:
            claim = await store.claim("m:e", start=True, token=tok())
            await store.keep(claim, states(1))
            await asyncio.sleep(TERMS.idle_s + 0.1)
            with pytest.raises(ExpiredSequence, match=r"expired after 0.4 s"):
                await store.claim("m:e", start=False, token=tok())
            with pytest.raises(ExpiredSequence):  # still said, not "unknown"
                await store.claim("m:e", start=False, token=tok())
            claim = await store.claim("m:e", start=True, token=tok())  # and it can start again
            await store.keep(claim, states(2))
            assert (await store.claim("m:e", start=False, token=tok())).states == states(2)

    asyncio.run(run())


def test_at_most_so_many_live_sequences(opener: Opener) -> None:
    async def run() -> None:
        async with opened(opener) as store:
            for k in range(TERMS.max_sequences):
                await store.keep(await store.claim(f"m:{k}", start=True, token=tok()), states(k))
            with pytest.raises(StoreFull, match=r"^3 sequences live$"):
                await store.claim("m:more", start=True, token=tok())
            await store.drop(await store.claim("m:0", start=False, token=tok()))  # one ends: room for another
            await store.keep(await store.claim("m:more", start=True, token=tok()), states(7))
            await asyncio.sleep(TERMS.idle_s + 0.1)  # idle ones expire and make room
            await store.keep(await store.claim("m:later", start=True, token=tok()), states(8))

    asyncio.run(run())


def test_every_worker_sees_one_store(opener: Opener) -> None:
    """Two stores opened on one place (two workers, two replicas) take alternate chunks of one sequence."""

    async def run() -> None:
        async with opened(opener) as one, opened(opener) as two:
            await one.keep(await one.claim("m:f", start=True, token=tok()), states(1))
            for k in range(2, 8):
                store = (one, two)[k % 2]
                claim = await store.claim("m:f", start=False, token=tok())
                assert claim.states == states(k - 1)
                await store.keep(claim, states(k))

    asyncio.run(run())


@NEEDS_SERVER
def test_the_shared_store_down_is_unavailable_then_recovers(tmp_path: Path) -> None:
    port = free_port()

    async def attempt(store: SequenceStore) -> None:
        await store.keep(await store.claim("m:g", start=True, token=tok()), states(1))

    async def run() -> None:
        store = SharedStore(f"redis://127.0.0.1:{port}/0", TERMS, timeout_s=0.5)
        try:
            with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}"):
                await attempt(store)
            with valkey(tmp_path, port):
                await attempt(store)
                assert (await store.claim("m:g", start=False, token=tok())).states == states(1)
            with pytest.raises(StoreUnavailable):
                await store.claim("m:g", start=False, token=tok())
        finally:
            await store.close()

    asyncio.run(run())


def test_an_unusable_embedded_store_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreUnavailable, match="cannot be opened"):
        EmbeddedStore(tmp_path / "file" / "sequences.db", TERMS)


def test_a_lapsed_end_is_refused_and_the_sequence_lives_on(opener: Opener) -> None:
    async def run() -> None:
        async with opened(opener, Terms(idle_s=5, max_sequences=3, lease_s=0.2)) as store:
            await store.keep(await store.claim("m:h", start=True, token=tok()), states(1))
            stale = await store.claim("m:h", start=False, token=tok())
            await asyncio.sleep(0.3)
            fresh = await store.claim("m:h", start=False, token=tok())
            with pytest.raises(BusySequence):
                await store.drop(stale)
            await store.keep(fresh, states(2))
            assert (await store.claim("m:h", start=False, token=tok())).states == states(2)

    asyncio.run(run())


def test_a_claim_is_released_by_its_token_even_when_its_answer_was_lost(opener: Opener) -> None:
    """The caller releases by the token it chose, whether or not the claim's answer reached it."""

    async def run() -> None:
        async with opened(opener) as store:
            await store.keep(await store.claim("m:i", start=True, token=tok()), states(1))
            lost = tok()
            await store.claim("m:i", start=False, token=lost)  # its answer "lost": the caller only has its token
            await store.release(Claim("m:i", lost, None))
            assert (await store.claim("m:i", start=False, token=tok())).states == states(1)  # free again, unchanged

    asyncio.run(run())


def test_the_embedded_store_waits_for_another_workers_lock_without_blocking(tmp_path: Path) -> None:
    import sqlite3

    async def run() -> None:
        store = EmbeddedStore(tmp_path / "sequences.db", TERMS)
        other = sqlite3.connect(tmp_path / "sequences.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another worker holds the write lock
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        claim = asyncio.ensure_future(store.claim("m:j", start=True, token=tok()))
        await asyncio.sleep(0.2)
        assert not claim.done() and ticks >= 10  # waiting, and the loop runs on
        other.execute("COMMIT")
        await store.keep(await claim, states(1))
        ticker.cancel()
        await store.close()

    asyncio.run(run())


def test_workers_starting_together_all_open_the_embedded_store(tmp_path: Path) -> None:
    """Every worker of a server opens the file at the same start; one setting it up must not fail another."""
    import sqlite3
    import threading

    path = tmp_path / "sequences.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another worker is setting the new file up
    opened: list[EmbeddedStore] = []
    opening = threading.Thread(target=lambda: opened.append(EmbeddedStore(path, TERMS)))
    opening.start()
    opening.join(0.3)
    assert opening.is_alive()  # waiting for the other worker, not failing
    other.execute("COMMIT")
    opening.join(5)
    assert len(opened) == 1

    async def run() -> None:
        store = opened[0]
        other.execute("BEGIN IMMEDIATE")  # once open, a lock is waited for without blocking (as above)
        began = time.monotonic()
        claim = asyncio.ensure_future(store.claim("m:k", start=True, token=tok()))
        await asyncio.sleep(0.05)
        assert not claim.done() and time.monotonic() - began < 0.5
        other.execute("COMMIT")
        await store.keep(await claim, states(1))
        await store.close()

    asyncio.run(run())
    other.close()


def test_an_embedded_store_of_an_earlier_version_is_brought_up_to_date(tmp_path: Path) -> None:
    """A file kept with ``LSTM_STATE_URL=sqlite:///...`` from before chunks were counted goes on serving."""
    import sqlite3

    path = tmp_path / "sequences.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute(
        "CREATE TABLE sequences (key TEXT PRIMARY KEY, status TEXT NOT NULL, states BLOB, used REAL NOT NULL, "
        "claimed_until REAL NOT NULL, token TEXT)"
    )
    old.execute("INSERT INTO sequences VALUES ('m:old', 'live', ?, ?, 0, NULL)", (states(1), time.time()))
    old.close()

    async def run() -> None:
        store = EmbeddedStore(path, TERMS)
        claim = await store.claim("m:old", start=False, token=tok(), chunk=4)  # counted from its first number
        assert claim.states == states(1) and not claim.replay
        await store.keep(
            claim,
            states(2),
        )
        assert (await store.claim("m:old", start=False, token=tok(), chunk=4)).replay  # from now on, counted
        with pytest.raises(OutOfOrder):
            await store.claim("m:old", start=False, token=tok(), chunk=9)
        assert (await store.claim("m:old", start=False, token=tok(), chunk=5)).states == states(2)
        await store.close()

    asyncio.run(run())


def test_a_renewed_claim_outlasts_its_lease_and_a_dead_ones_lapses(opener: Opener) -> None:
    terms = Terms(idle_s=5, max_sequences=3, lease_s=0.3)

    async def run() -> None:
        async with opened(opener, terms) as store:
            await store.keep(await store.claim("m:l", start=True, token=tok()), states(1))
            held = await store.claim("m:l", start=False, token=tok())
            for _ in range(3):  # renewed: held well past its lease
                await asyncio.sleep(0.15)
                await store.renew(held)
            with pytest.raises(BusySequence) as busy:
                await store.claim("m:l", start=False, token=tok())
            assert 0 < busy.value.retry_after <= terms.lease_s
            await asyncio.sleep(0.4)  # its worker died: no renewal, the claim lapses (then as a lapsed claim, above)
            await store.claim("m:l", start=False, token=tok())
            with pytest.raises(BusySequence):
                await store.renew(held)  # the dead claim cannot come back

    asyncio.run(run())


def test_workers_starting_together_bring_an_earlier_file_up_to_date_once(tmp_path: Path) -> None:
    """Every worker opens the file at the same start: one adds the new columns, none fails on it."""
    import sqlite3
    from concurrent.futures import ProcessPoolExecutor

    path = tmp_path / "sequences.db"
    for attempt in range(5):
        path.unlink(missing_ok=True)
        old = sqlite3.connect(path)
        old.execute(
            "CREATE TABLE sequences (key TEXT PRIMARY KEY, status TEXT NOT NULL, states BLOB, used REAL NOT NULL, "
            "claimed_until REAL NOT NULL, token TEXT)"
        )
        old.commit()
        old.close()
        with ProcessPoolExecutor(4) as pool:
            assert list(pool.map(_open_and_close, [path] * 4)) == [True] * 4, f"attempt {attempt}"


def _open_and_close(path: Path) -> bool:
    EmbeddedStore(path, TERMS).db.close()
    return True


def test_a_shared_sequence_from_before_chunks_were_counted_counts_from_its_first_number(
    valkey_url: str,
) -> None:
    import redis

    async def run() -> None:
        store = SharedStore(valkey_url, TERMS)
        store.prefix = f"legacy{os.urandom(4).hex()}:"
        raw = redis.Redis.from_url(valkey_url)
        (key, live) = store._keys("m:old")
        now = int(time.time() * 1000)
        raw.hset(key, mapping={"status": "live", "states": states(1), "used": now, "claimed_until": 0})
        raw.zadd(live, {"m:old": now})
        claim = await store.claim("m:old", start=False, token=tok(), chunk=4)
        assert claim.states == states(1) and not claim.replay
        await store.keep(claim, states(2))
        assert (await store.claim("m:old", start=False, token=tok(), chunk=4)).replay
        with pytest.raises(OutOfOrder):
            await store.claim("m:old", start=False, token=tok(), chunk=9)
        assert (await store.claim("m:old", start=False, token=tok(), chunk=5)).states == states(2)
        raw.close()
        await store.close()

    asyncio.run(run())


@NEEDS_SERVER
def test_a_full_valkey_refuses_starts_and_lets_live_sequences_go_on_and_end(tmp_path: Path) -> None:
    """maxmemory with noeviction: a start is refused before anything is written, so the store stops growing,
    while every live sequence goes on and ends (which frees memory) rather than stalling."""
    import redis

    with valkey(tmp_path) as url:
        raw = redis.Redis.from_url(url)

        async def run() -> None:
            store = SharedStore(url, Terms(idle_s=60, max_sequences=10**6, lease_s=1.0))
            live = [f"m:live{k}" for k in range(5)]
            for key in live:
                await store.keep(await store.claim(key, start=True, token=tok()), states(1))
            raw.config_set("maxmemory-policy", "noeviction")
            raw.config_set("maxmemory", int(raw.info("memory")["used_memory"]) + 20_000)
            refused = None
            for k in range(1000):
                try:
                    await store.keep(await store.claim(f"m:new{k}", start=True, token=tok()), states(2))
                except StoreFull as e:
                    refused = e
                    break
            assert refused is not None and refused.limit is None  # the memory, not the count
            used = raw.info("memory")["used_memory"]
            for _ in range(20):  # starts go on being refused, and write nothing
                with pytest.raises(StoreFull):
                    await store.claim(f"m:more{_}", start=True, token=tok())
            assert raw.info("memory")["used_memory"] <= used + 2_000
            for key in live:  # every live sequence goes on, then ends
                claim = await store.claim(key, start=False, token=tok(), chunk=1, inputs=b"x")
                assert claim.states == states(1)
                await store.keep(claim, states(3))
                await store.drop(await store.claim(key, start=False, token=tok(), chunk=2, inputs=b"y"))
            await store.close()

        asyncio.run(run())
        raw.close()
