"""The machine's cores as the workers of one server share them.

Each worker runs its model calls on its share of the cores (``intra_op_threads``). A large call would run
almost twice as fast on two cores (an LSTM splits its batch across threads), but while the other workers have
work of their own, more threads than cores only slow everyone down. So each worker posts how many requests it
has in progress on a board that every worker of the server reads, and a large call takes every core only when
every other worker has had nothing in progress for ``QUIET_S`` (``Engine``'s wide session): a worker between
two requests of its clients is not idle. A read may be a moment stale; the cost of that is one call sharing
its cores, never a wrong answer.

The board is a folder (``BOARD_ENV``, made by ``python -m service``): ``board`` holds two int64 per slot (the
requests in progress, and when there were last none, in monotonic ns), and ``slot-<i>.lock`` is slot i's
claim, a ``flock`` that belongs to the open file and goes when its process ends. There are twice as many
slots as workers, since uvicorn starts a worker's replacement before it stops the old one (SIGHUP), and a
slot whose lock nobody holds is ignored whatever it says (its worker is gone).
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import time
from functools import cache
from pathlib import Path

from ..settings import WIDE_QUIET_S

log = logging.getLogger("service")
BOARD_ENV = "LSTM_CORES_BOARD"  # set by python -m service for its workers: the board's folder
WORDS = 2  # per slot: requests in progress, and when there were last none (monotonic ns)
QUIET_S = WIDE_QUIET_S  # a worker with none in progress for less than this may be between two requests
CLAIM_PASSES = 3


def make(folder: Path, workers: int) -> None:
    """An empty board for ``workers`` workers (and as many replacements) in ``folder``."""
    slots = 2 * workers
    (folder / "board").write_bytes(bytes(slots * WORDS * 8))
    for slot in range(slots):
        (folder / f"slot-{slot}.lock").touch()


class Board:
    """This worker's view of the board: its own slot, written by it alone, and the others', read."""

    def __init__(self, folder: Path) -> None:
        self.locks: list[int] = []
        self.mm: mmap.mmap | None = None
        try:
            with open(folder / "board", "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                slots = size // (WORDS * 8)
                if slots < 1 or size % (WORDS * 8):
                    raise ValueError(f"{folder / 'board'} is no board ({size} bytes)")
                self.mm = mmap.mmap(f.fileno(), size)
            for i in range(slots):
                self.locks.append(os.open(folder / f"slot-{i}.lock", os.O_RDWR))
            self.slot = self._claim(folder)
        except BaseException:
            self._close()
            raise
        self.words = memoryview(self.mm).cast("q")  # slot i: [2i] in progress, [2i + 1] when it last had none
        self.words[WORDS * self.slot : WORDS * (self.slot + 1)] = memoryview(bytes(WORDS * 8)).cast("q")

    def _claim(self, folder: Path) -> int:
        """The first free slot; a few passes, since another worker's look at a free slot holds it a moment."""
        for attempt in range(CLAIM_PASSES):
            for slot, fd in enumerate(self.locks):
                if _take(fd):
                    return slot
            time.sleep(0.01 * (attempt + 1))
        raise ValueError(f"every slot of {folder} is taken")

    def post(self, in_progress: int) -> None:
        if in_progress == 0:
            self.words[WORDS * self.slot + 1] = time.monotonic_ns()
        self.words[WORDS * self.slot] = in_progress

    def others_idle(self) -> bool:
        """Whether every other worker has had no request in progress for QUIET_S (a slot nobody holds: none)."""
        quiet_since = time.monotonic_ns() - int(QUIET_S * 1e9)
        words = self.words
        for slot, fd in enumerate(self.locks):
            if slot == self.slot:
                continue
            if (words[WORDS * slot] or words[WORDS * slot + 1] > quiet_since) and _held(fd):
                return False
        return True

    def close(self) -> None:
        self.words.release()
        self._close()

    def _close(self) -> None:
        if self.mm is not None:
            self.mm.close()
        for fd in self.locks:
            os.close(fd)


def _take(fd: int) -> bool:
    """Whether this process now holds the slot (any failure: it does not)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _held(fd: int) -> bool:
    """Whether another worker holds this slot (a try at taking it, given back at once; when the try fails for
    any reason, it counts as held: the cautious answer)."""
    if not _take(fd):
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


@cache
def board() -> Board | None:
    """This process's board: the server's (``BOARD_ENV``), opened once; None when it has none (one worker, a
    test's app) or it cannot be used."""
    path = os.environ.get(BOARD_ENV)
    if not path:
        return None
    try:
        return Board(Path(path))
    except (OSError, ValueError) as e:
        log.warning("no board of the workers' cores (%s): each model call keeps to this worker's threads", e)
        return None
