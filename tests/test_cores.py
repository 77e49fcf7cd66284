"""The board of the workers' cores: a slot per worker, claimed by a lock, read by every other worker; and a server
of two workers that uses it."""

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

from service.pipeline import cores
from service.settings import available_cpus as cores_available

from .conftest import running_server
from .test_observability import ROW, _quietly_post, _workers, sample


def worker(board: Path, posts: str = "") -> subprocess.Popen[str]:
    """Another worker: it claims a slot, runs ``posts`` (Python, ``b`` its board), says its slot, then waits for a
    line on stdin before it exits (its lock goes with it)."""
    code = f"""
        import sys
        from pathlib import Path
        from service.pipeline.cores import Board
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
    cores.make(tmp_path, 2)  # two workers: four slots
    return tmp_path


@pytest.fixture
def others() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()
        closed(p)


@pytest.fixture
def boards() -> Iterator[list[cores.Board]]:
    opened: list[cores.Board] = []
    yield opened
    for b in opened:
        b.close()
    cores.board.cache_clear()  # whatever a test left there


def test_each_board_claims_its_own_slot_twice_as_many_as_workers(board: Path, boards: list) -> None:
    boards += [cores.Board(board) for _ in range(4)]  # in one process too: a slot's lock belongs to its file
    assert [b.slot for b in boards] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="every slot"):
        cores.Board(board)
    boards.pop(1).close()  # its slot is free again
    boards.append(cores.Board(board))
    assert boards[-1].slot == 1


def test_others_idle_only_after_they_have_had_nothing_in_progress_for_a_while(
    board: Path, others: list, boards: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = cores.Board(board)
    boards.append(mine)
    assert mine.slot == 0 and mine.others_idle()  # the other slots: never used
    mine.post(3)  # this worker's own requests do not count
    assert mine.others_idle()
    others.append(worker(board, "b.post(2)"))
    assert claimed(others[0]) == 1
    assert not mine.others_idle()
    mine.post(2)  # its own count changing does not hide the other's (it is not subtracted)
    assert not mine.others_idle()
    end(others.pop())
    assert mine.others_idle()  # a slot nobody holds says nothing, whatever its count
    others.append(worker(board, "b.post(1); b.post(0)"))  # takes the slot over (cleared), then goes idle now
    assert claimed(others[0]) == 1
    monkeypatch.setattr(cores, "QUIET_S", 60.0)
    assert not mine.others_idle()  # idle for less than QUIET_S: maybe between two requests
    monkeypatch.setattr(cores, "QUIET_S", 0.05)
    time.sleep(0.06)
    assert mine.others_idle()


def test_a_slot_left_by_a_worker_that_died_says_nothing_and_is_taken_over_cleared(
    board: Path, others: list, boards: list
) -> None:
    others.append(worker(board, "b.post(5)"))
    assert claimed(others[0]) == 0
    others[0].kill()
    others[0].wait()  # (its pipes are closed with the others')
    first = cores.Board(board)  # its lock went with it
    boards.append(first)
    assert first.slot == 0 and list(first.words[0:2]) == [0, 0]  # its count and time, not the dead worker's
    others.append(worker(board, "b.post(5)"))
    assert claimed(others[1]) == 1
    others[1].kill()  # a worker killed and replaced elsewhere (uvicorn's SIGHUP starts the new one first)
    others[1].wait()
    assert first.words[2] == 5 and first.others_idle()


def test_the_process_board_is_the_servers_or_none(
    board: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    boards: list,
) -> None:
    cores.board.cache_clear()
    monkeypatch.delenv(cores.BOARD_ENV, raising=False)
    assert cores.board() is None  # one worker, or a test's app
    cores.board.cache_clear()
    bad = tmp_path_factory.mktemp("bad")
    (bad / "board").write_bytes(b"123")
    monkeypatch.setenv(cores.BOARD_ENV, str(bad))
    with caplog.at_level(logging.WARNING, logger="service"):
        assert cores.board() is None
    assert "no board" in caplog.text and "is no board" in caplog.text
    cores.board.cache_clear()
    monkeypatch.setenv(cores.BOARD_ENV, str(board))
    first = cores.board()
    assert first is not None and first.slot == 0 and cores.board() is first  # opened once per process
    boards.append(first)


def test_a_server_of_two_workers_runs_a_large_request_on_every_core_when_the_other_is_idle(repo: Path) -> None:
    """``python -m service`` makes the board; each worker posts to its slot; once workers killed with requests in
    progress are replaced, what their slots said counts no more, and large requests run on every core again."""
    env = {
        "LSTM_WORKERS": "2",
        "LSTM_INTRA_OP_THREADS": "1",
        "LSTM_WIDE_MIN_STEPS": "64",
        "LSTM_EXPLAIN_MAX_VALUES": "1000000",
    }
    small = {"inputs": [[ROW] * 16]}  # 16 steps: below the setting
    large = {"inputs": [[ROW] * 16] * 8}  # 128 steps of 8 sequences
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
        for n in (1, 2):  # each on a new connection, to either worker
            post(url, large)
            assert wide_calls(url) == (n if wide else 0)
        workers = _workers(proc.pid)
        assert len(workers) == 2
        environ = dict(v.split(b"=", 1) for v in Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0") if v)
        board = Path(environ[cores.BOARD_ENV.encode()].decode()) / "board"

        def in_progress() -> list[int]:
            return list(memoryview(board.read_bytes()).cast("q")[0::2])

        assert in_progress() == [0, 0, 0, 0]  # four slots, for two workers and their replacements

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
        before = wide_calls(url)  # what the workers killed counted stays counted
        for n in (1, 2):
            post(url, large)
            assert wide_calls(url) == (before + n if wide else 0)
        assert Path(environ[cores.BOARD_ENV.encode()].decode()).is_relative_to(environ[b"TMPDIR"].decode())


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_a_board_that_cannot_be_used_is_refused_and_holds_nothing(board: Path, boards: list) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    (board / "slot-3.lock").unlink()  # a slot's lock gone
    with pytest.raises(OSError):
        cores.Board(board)
    assert len(os.listdir("/proc/self/fd")) == fds  # every file it opened is closed again
    (board / "slot-3.lock").touch()
    boards.append(cores.Board(board))
    assert boards[0].slot == 0  # the failed one kept no slot
