"""The machine's cores as a server's workers share them.

Each worker runs its model calls on its share of the cores (``intra_op_threads``). A large call would run
almost twice as fast on two cores (an LSTM splits its batch across threads), but while the other workers
have work of their own, more threads than cores only slow everyone down. So each worker posts how many
requests it has in progress on a board that every worker of the server reads: one slot per worker in one
small shared file (``BOARD_ENV``, made by ``python -m service``). A large call takes every core only when
every other worker has had nothing in progress for ``QUIET_S`` (``Engine``'s wide session): a worker
between two requests of its clients is not idle. A read may be a moment stale; the cost of that is one
call sharing its cores, never a wrong answer.

A worker claims a free slot by locking it (a lock the system releases when the process ends, so a worker
that uvicorn starts again in place of one that died takes its slot over).
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import time
from functools import cache
from pathlib import Path

log = logging.getLogger("service")
BOARD_ENV = "LSTM_CORES_BOARD"  # set by python -m service for its workers: the board's file
SLOT_BYTES = 16  # per worker, two int64: its requests in progress, and when it last had none (monotonic ns)
QUIET_S = 0.01  # a worker with none in progress for less than this may be between two requests


def make(path: Path, workers: int) -> None:
    """A board of ``workers`` empty slots at ``path``."""
    path.write_bytes(bytes(workers * SLOT_BYTES))


class Board:
    """This worker's view of the board: its own slot, written by it alone, and the others', read."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            slots = size // SLOT_BYTES
            if slots < 1 or size % SLOT_BYTES:
                raise ValueError(f"{path} is no board ({size} bytes)")
            for slot in range(slots):
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, SLOT_BYTES, slot * SLOT_BYTES)
                except OSError:
                    continue  # another worker's
                break
            else:
                raise ValueError(f"every slot of {path} is taken")
            self.mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd  # open for the process's life: closing it would release the slot's lock
        self.slot = slot
        self.words = memoryview(self.mm).cast("q")  # worker i: [2i] in progress, [2i + 1] when it last had none
        self.words[2 * slot : 2 * slot + 2] = memoryview(bytes(SLOT_BYTES)).cast("q")  # a dead worker's, maybe

    def post(self, in_progress: int) -> None:
        if in_progress == 0:
            self.words[2 * self.slot + 1] = time.monotonic_ns()
        self.words[2 * self.slot] = in_progress

    def others_idle(self) -> bool:
        """Whether no other worker has had a request in progress for QUIET_S."""
        words, mine = self.words, 2 * self.slot
        if sum(words[0::2]) != words[mine]:
            return False
        quiet_since = time.monotonic_ns() - int(QUIET_S * 1e9)
        return all(last <= quiet_since for i, last in enumerate(words[1::2]) if 2 * i != mine)

    def close(self) -> None:
        self.words.release()
        self.mm.close()
        os.close(self.fd)


@cache
def board() -> Board | None:
    """This process's board: the server's (``BOARD_ENV``), opened once; None when it has none (one worker, a
    test's app) or its file cannot be used."""
    path = os.environ.get(BOARD_ENV)
    if not path:
        return None
    try:
        return Board(Path(path))
    except (OSError, ValueError) as e:
        log.warning("no board of the workers' cores (%s): each model call keeps to this worker's threads", e)
        return None
