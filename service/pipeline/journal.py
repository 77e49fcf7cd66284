"""The control journal: one server's explicit loads and unloads, in a file its workers share, and each worker's
acknowledgement of them (``service.pipeline.control`` writes and follows it).

    {"epoch": "9f2c...", "last": 7,
     "models": {"name": [7, "load"]},                          the last change of each model, numbered
     "workers": {"4242": {"seen": 7, "failed": {"name": [7, "why"]}}}}

``epoch`` is made with the file: numbers start again in a new one (the file was deleted or damaged). The worker
that makes it writes first the last change it applied to each model, so that the new epoch says what the old one
said (as far as that worker knows); a worker that sees a new epoch applies every change in it again.
``workers`` says, for each worker, the last number it has applied and the loads that failed there, so that the
worker that answered a load can tell when every other worker serves it too. Every change is written whole under
a lock (``flock``), then renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Ack:
    seen: int  # the last change applied
    failed: dict[str, tuple[int, str]] = field(default_factory=dict)  # model -> (change, why) of loads that failed


@dataclass
class State:
    epoch: str = ""
    last: int = 0
    models: dict[str, tuple[int, str]] = field(default_factory=dict)  # model -> (change, "load" | "unload")
    workers: dict[int, Ack] = field(default_factory=dict)  # pid -> what it applied

    @classmethod
    def parse(cls, data: Any) -> State:
        """Raises on anything but the journal's shape."""
        return cls(
            epoch=str(data["epoch"]),
            last=int(data["last"]),
            models={str(name): (int(n), str(action)) for name, (n, action) in data["models"].items()},
            workers={
                int(pid): Ack(int(a["seen"]), {str(m): (int(n), str(why)) for m, (n, why) in a["failed"].items()})
                for pid, a in data["workers"].items()
            },
        )

    def add(self, name: str, action: str) -> None:
        """One change more, numbered after the last."""
        self.last += 1
        self.models[name] = (self.last, action)

    def dump(self) -> str:
        workers = {str(pid): {"seen": a.seen, "failed": a.failed} for pid, a in self.workers.items()}
        return json.dumps({"epoch": self.epoch, "last": self.last, "models": self.models, "workers": workers})


DAMAGED = (ValueError, KeyError, TypeError, AttributeError)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> State:
        """The journal as it is; an empty state (no epoch) for a file that is missing or not the journal's shape.
        Raises OSError where the file is there but cannot be read (a valid journal is not taken for none)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return State()
        try:
            return State.parse(json.loads(text))
        except DAMAGED:
            return State()

    def record(self, name: str, action: str, carry: dict[str, str]) -> State:
        """Write one change; returns the journal after it. If the file is missing or damaged, the new epoch
        starts with ``carry`` (the last action this worker applied to each model), then the change."""

        return self._update(lambda state: state.add(name, action), carry)

    def join(self, pid: int, carry: dict[str, str]) -> State:
        """Say that worker ``pid`` is there, having applied nothing of this journal yet, so that a load waits for
        it. If the file is missing or damaged, the new epoch starts with ``carry``."""

        def change(state: State) -> None:
            state.workers[pid] = Ack(0)  # what a dead worker of the same pid said is not this one's

        return self._update(change, carry)

    def ack(self, pid: int, epoch: str, seen: int, failed: dict[str, tuple[int, str]]) -> None:
        """A worker's acknowledgement, if the journal is still of that epoch; workers that are gone are dropped."""

        def change(state: State) -> None:
            if state.epoch == epoch:
                state.workers[pid] = Ack(seen, failed)
            state.workers = {p: a for p, a in state.workers.items() if alive(p)}

        self._update(change)

    def _update(self, change: Callable[[State], None], carry: dict[str, str] | None = None) -> State:
        """Read, change and write the journal under its lock. Raises OSError if it cannot be written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)  # a folder removed from under the server
        with self._locked():
            state = self.read()
            if not state.epoch:  # a new journal: what the worker making it has applied comes first
                state = State(epoch=os.urandom(8).hex())
                for name, action in sorted((carry or {}).items()):
                    state.add(name, action)
            change(state)
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            temporary.write_text(state.dump())
            temporary.replace(self.path)
            return state

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True
