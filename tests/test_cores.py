"""The board of the workers' cores: a slot per worker, claimed by a lock, read by every other worker.

Record locks belong to a process: each other worker here is a process of its own."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.model import cores
from service.settings import available_cpus as cores_available

from .conftest import running_server
from .test_observability import ROW, _quietly_post, _workers, sample


def worker(board: Path, posts: str = "") -> subprocess.Popen[str]:
    """Another worker: it claims a slot, says which, runs ``posts`` (Python, ``b`` its board), then waits for a
    line on stdin before it exits (its lock goes with it)."""
    code = f"""
        import sys
        from pathlib import Path
        from service.model.cores import Board
        b = Board(Path({str(board)!r}))
        {posts}
        print(b.slot, flush=True)
        sys.stdin.readline()
    """
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def claimed(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the worker failed before claiming a slot"
    return int(line)


def end(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0
    closed(proc)


def closed(proc: subprocess.Popen[str]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


@pytest.fixture
def board(tmp_path: Path) -> Path:
    path = tmp_path / "board"
    cores.make(path, 2)
    return path


@pytest.fixture
def others() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()
        closed(p)


def test_each_worker_claims_its_own_slot_and_a_third_finds_none(board: Path, others: list) -> None:
    others.append(worker(board))
    assert claimed(others[0]) == 0
    mine = cores.Board(board)
    assert mine.slot == 1
    code = f"from pathlib import Path; from service.model.cores import Board; Board(Path({str(board)!r}))"
    third = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert third.returncode != 0 and "every slot" in third.stderr
    mine.close()


def test_others_idle_only_after_they_have_had_nothing_in_progress_for_a_while(
    board: Path, others: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = cores.Board(board)
    assert mine.slot == 0 and mine.others_idle()  # the other slot: never used
    mine.post(3)  # this worker's own requests do not count
    assert mine.others_idle()
    others.append(worker(board, "b.post(2)"))
    assert claimed(others[0]) == 1
    assert not mine.others_idle()
    end(others.pop())
    others.append(worker(board, "b.post(1); b.post(0)"))  # takes the slot over (zeroed), then goes idle now
    assert claimed(others[0]) == 1
    monkeypatch.setattr(cores, "QUIET_S", 60.0)
    assert not mine.others_idle()  # idle for less than QUIET_S: maybe between two requests
    monkeypatch.setattr(cores, "QUIET_S", 0.05)
    time.sleep(0.06)
    assert mine.others_idle()
    mine.close()


def test_a_slot_left_by_a_worker_that_died_is_taken_over_and_cleared(board: Path, others: list) -> None:
    others.append(worker(board, "b.post(5)"))
    assert claimed(others[0]) == 0
    others[0].kill()
    others[0].wait()  # (its pipes are closed with the others')
    mine = cores.Board(board)  # its lock went with it
    assert mine.slot == 0
    assert mine.words[0] == 0 and mine.words[1] == 0  # its count and time, not the dead worker's
    mine.close()


def test_the_process_board_is_the_servers_or_none(
    board: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cores.board.cache_clear()
    monkeypatch.delenv(cores.BOARD_ENV, raising=False)
    assert cores.board() is None  # one worker, or a test's app
    cores.board.cache_clear()
    bad = tmp_path / "bad"
    bad.write_bytes(b"123")
    monkeypatch.setenv(cores.BOARD_ENV, str(bad))
    with caplog.at_level(logging.WARNING, logger="service"):
        assert cores.board() is None
    assert "no board" in caplog.text and "is no board" in caplog.text
    cores.board.cache_clear()
    monkeypatch.setenv(cores.BOARD_ENV, str(board))
    first = cores.board()
    assert first is not None and first.slot == 0 and cores.board() is first  # opened once per process
    first.close()
    cores.board.cache_clear()


def test_a_server_of_two_workers_runs_a_large_request_on_every_core_when_the_other_is_idle(repo: Path) -> None:
    """``python -m service`` makes the board; each worker claims a slot; workers killed with requests in progress
    are replaced by ones that take their slots over, cleared, and large requests run on every core again."""
    env = {
        "LSTM_WORKERS": "2",
        "LSTM_INTRA_OP_THREADS": "1",
        "LSTM_WIDE_MIN_STEPS": "64",
        "LSTM_EXPLAIN_MAX_VALUES": "1000000",
    }
    small = {"inputs": [[ROW] * 16]}  # 16 steps: below the setting
    large = {"inputs": [[ROW] * 16] * 4}  # 64 steps
    heavy = {"inputs": [[ROW] * 10_000] * 2, "explain": True}  # about a second in the numpy reference
    wide = cores_available() > 1  # one core: no session on more threads than the worker's one

    def wide_calls(url: str) -> float:
        return sample(httpx.get(f"{url}/metrics").text, "lstm_wide_calls_total", model="tiny", version="1")

    def post(url: str, body: dict) -> None:
        time.sleep(2 * cores.QUIET_S)  # the other worker's last request is past
        assert httpx.post(f"{url}/predict", json=body, timeout=10).status_code == 200

    with running_server(repo, env) as (url, proc):
        post(url, small)
        assert wide_calls(url) == 0
        for n in (1, 2):  # new connections: the kernel spreads them over both workers
            post(url, large)
            assert wide_calls(url) == (n if wide else 0)
        workers = _workers(proc.pid)
        assert len(workers) == 2
        environ = dict(v.split(b"=", 1) for v in Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0") if v)
        words = memoryview(Path(environ[cores.BOARD_ENV.encode()].decode()).read_bytes()).cast("q")
        assert len(words) == 4 and list(words[0::2]) == [0, 0]  # two slots; no request in progress

        def in_progress() -> list[int]:
            return list(memoryview(Path(environ[cores.BOARD_ENV.encode()].decode()).read_bytes()).cast("q")[0::2])

        flights = [threading.Thread(target=_quietly_post, args=(f"{url}/predict", heavy)) for _ in range(4)]
        for t in flights:
            t.start()
        deadline = time.monotonic() + 10
        while sum(in_progress()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sum(in_progress()) >= 2
        for pid in workers:
            os.kill(pid, signal.SIGKILL)  # their slots say they have requests in progress
        for t in flights:
            t.join(30)
        deadline = time.monotonic() + 30
        while not (len(_workers(proc.pid)) == 2 and ready(url)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not set(workers) & set(_workers(proc.pid)) and len(_workers(proc.pid)) == 2
        assert in_progress() == [0, 0]  # taken over, and cleared
        post(url, large)
        assert wide_calls(url) == (3 if wide else 0)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
