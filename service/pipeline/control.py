"""Model control while serving (``LSTM_MODEL_CONTROL``), Triton's three modes.

- ``none``: what loaded at start serves until the server stops.
- ``poll``: every ``LSTM_REPOSITORY_POLL_S`` each worker looks at the repository. A model whose files changed
  (its ``config.pbtxt``, a version added, removed or rewritten) is loaded again; a model gone from it is unloaded.
  A load that fails is logged, and tried again once the model's files change again.
- ``explicit``: loads and unloads on request only (the model repository extension's ``load`` and ``unload``).
  With several workers, the worker that answers applies the change and writes it to the server's control
  journal (``service.pipeline.journal``); the others apply it within ``FOLLOW_S`` and say so there, and the
  answer waits until every worker serves it (or says which failed, and why).

A load builds each new or changed version and warms it off the event loop, then swaps it in at once; requests
already admitted finish on the version they started on, which is freed when they are done (``Registry``). A load
that fails leaves what was serving untouched, and says why. One change at a time per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from anyio.to_thread import run_sync as run_in_threadpool

from .. import metrics
from ..model import repository
from ..model.errors import ModelLoadError
from ..settings import CONTROL_JOURNAL_ENV, Settings
from .errors import ControlIncomplete, LoadFailed, ModelControlOff, ModelInUse, NotReady, UnknownModel
from .journal import Journal, alive
from .registry import Change, Registry

log = logging.getLogger(__name__)
FOLLOW_S = 0.5  # how often a worker looks at the control journal


class ModelControl:
    def __init__(
        self,
        registry: Registry,
        mode: str,
        poll_s: float,
        journal: Journal | None = None,
        wait_s: float = 30.0,
        pid: int | None = None,
        workers: int = 1,
    ) -> None:
        self.registry = registry
        self.mode = mode
        self.poll_s = poll_s
        self.journal = journal if mode == "explicit" else None
        self.wait_s = wait_s  # how long a load waits for the other workers to apply it
        self.pid = pid or os.getpid()  # this worker, in the journal
        self.workers = workers  # the server's worker processes, this one included
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stamps: dict[str, Any] = {}  # poll: each model's files as last seen
        # explicit, several workers: the journal's epoch, the changes of it this worker has applied, and its loads
        # that failed (change, why), which it acknowledges
        self._epoch = ""
        self._seen: dict[str, int] = {}
        self._failed: dict[str, tuple[int, str]] = {}
        self._applied: dict[str, str] = {}  # the last change ("load", "unload") of each model applied here

    @classmethod
    def create(cls, s: Settings) -> ModelControl:
        """Load the registry and set up control (blocking: call it off the event loop)."""
        stamps = _look(s.model_repository) if s.model_control == "poll" else {}  # before loading: no change missed
        path = os.environ.get(CONTROL_JOURNAL_ENV)
        journal = Journal(Path(path)) if path else None
        control = cls(
            Registry.load(s), s.model_control, s.repository_poll_s, journal, s.request_timeout_s, workers=s.workers or 1
        )
        control._stamps = stamps
        return control

    def start(self) -> None:
        if self.mode == "poll":
            self._task = asyncio.get_running_loop().create_task(self._every(self.poll_s, self.poll))
        elif self.journal is not None:  # the first look at once: it tells the other workers this one is here
            self._task = asyncio.get_running_loop().create_task(self._every(FOLLOW_S, self.follow, first=0.0))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _every(self, seconds: float, step: Any, first: float | None = None) -> None:
        await asyncio.sleep(seconds if first is None else first)
        failing = ""  # the same failure, look after look, is logged once
        while True:
            try:
                await step()
                failing = ""
            except Exception as e:  # a look that failed is tried again next time; the loop never ends on it
                if repr(e) != failing:
                    log.exception("model control: %s failed", step.__name__)
                failing = repr(e)
            await asyncio.sleep(seconds)

    # -- on request (explicit) --

    def _explicit(self, action: str) -> None:
        if self.mode != "explicit":
            raise ModelControlOff(
                f"this server's model control is {self.mode!r} (LSTM_MODEL_CONTROL): models {action} on request "
                "only with 'explicit'"
            )

    async def load(self, name: str) -> Change:
        """Load a model of the repository, or load it again: new and changed versions swap in, the rest stay.
        With several workers, answered once every worker serves it."""
        self._explicit("load")
        if not await run_in_threadpool(_in_repository, self.registry.root, name):
            raise UnknownModel(f"No model {name!r} in the repository to load")
        change: Change = await self._on_request(name, "load", self._load)
        return change

    async def unload(self, name: str) -> None:
        """Stop serving every version of a model (the default model is refused: ``ModelInUse``)."""
        self._explicit("unload")
        if not any(n == name for n, _, _ in self.registry.index()):
            raise UnknownModel(f"No model {name!r} to unload; models: {', '.join(self.registry.names())}")
        await self._on_request(name, "unload", self._unload)

    async def _on_request(self, name: str, action: str, apply: Callable[[str], Awaitable[Any]]) -> Any:
        """Apply a change here and write it to the journal (one change at a time), then wait for the others."""
        async with self._lock:
            result = await apply(name)
            recorded = await self._record(name, action)
        if recorded is not None:
            await self._others(name, action, *recorded)
        return result

    async def _record(self, name: str, action: str) -> tuple[str, int] | None:
        """Write the change this worker applied to the journal; its epoch and number (None: one worker)."""
        self._applied[name] = action
        if self.journal is None:
            return None
        try:
            state = await run_in_threadpool(self.journal.record, name, action, dict(self._applied))
        except OSError as e:
            log.error("model %s: the control journal %s cannot be written: %s", name, self.journal.path, e)
            raise ControlIncomplete(
                f"model {name!r}: this worker applied the {action}, but the server's control journal cannot be "
                f"written ({e.strerror or e}), so its other workers have not; fix it and send the {action} again"
            ) from None
        if state.epoch != self._epoch:  # a new journal: its other changes are applied at the next look (no-ops
            self._epoch, self._seen = state.epoch, {}  # where this worker carried them in itself)
        self._seen[name] = state.last
        return state.epoch, state.last

    async def _others(self, name: str, action: str, epoch: str, number: int) -> None:
        """Wait until every other worker has applied change ``number``; LoadFailed naming those that failed. A
        journal made anew meanwhile (deleted, damaged) gets the change again, and the wait goes on there."""
        assert self.journal is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while True:
            state = await run_in_threadpool(self.journal.read)
            if state.epoch == epoch:
                others = {pid: a for pid, a in state.workers.items() if pid != self.pid and alive(pid)}
                failed = {p: a.failed[name][1] for p, a in others.items() if a.failed.get(name, (0, ""))[0] == number}
                if failed:
                    pid, why = next(iter(failed.items()))
                    raise LoadFailed(
                        f"model {name!r}: the {action} applies on this worker, but {len(failed)} of the server's other "
                        f"workers could not apply it (worker {pid}: {why}); fix the files and send the {action} again"
                    )
                done = sum(1 for a in others.values() if a.seen >= number)  # a worker not in the journal: not done
                if done >= self.workers - 1:
                    return
            if loop.time() > deadline:
                raise ControlIncomplete(
                    f"model {name!r}: the {action} applies on this worker; not every other worker of the server had "
                    f"applied it after {self.wait_s:g} s"
                )
            if state.epoch != epoch:  # made anew meanwhile (deleted, damaged): the change goes in again
                log.warning("model %s: the control journal was made anew; writing the %s again", name, action)
                async with self._lock:
                    recorded = await self._record(name, action)
                assert recorded is not None
                epoch, number = recorded
            await asyncio.sleep(FOLLOW_S / 10)

    async def follow(self) -> None:
        """Apply the changes other workers made on request (explicit, several workers), and say so."""
        assert self.journal is not None
        state = await run_in_threadpool(self.journal.read)
        if self.pid not in state.workers or not self._epoch:  # its first look (a pid may be a dead one's), or a new
            state = await run_in_threadpool(self.journal.join, self.pid, dict(self._applied))  # journal: it joins
        async with self._lock:
            fresh = state.epoch != self._epoch
            if fresh:  # a new journal (or this worker's first look): every change in it applies
                self._epoch, self._seen, self._failed = state.epoch, {}, {}
            changes = [(n, name, action) for name, (n, action) in state.models.items() if self._seen.get(name, 0) < n]
            for n, name, action in sorted(changes):
                self._seen[name] = n
                try:
                    await (self._load(name) if action == "load" else self._unload(name))
                    self._failed.pop(name, None)
                    self._applied[name] = action
                except (LoadFailed, ModelInUse, UnknownModel) as e:  # logged where it failed; said in the ack
                    self._failed[name] = (n, str(e))
                except Exception as e:  # anything else (a folder gone meanwhile): said in the ack all the same
                    log.exception("model %s: the %s from the journal failed", name, action)
                    self._failed[name] = (n, repr(e))
        mine = state.workers.get(self.pid)
        if fresh or changes or mine is None or mine.seen < state.last:
            await run_in_threadpool(self.journal.ack, self.pid, state.epoch, state.last, dict(self._failed))

    # -- watching the repository (poll) --

    async def poll(self) -> None:
        """Load each model whose files changed since the last look; unload each model gone."""
        async with self._lock:
            now = await run_in_threadpool(_look, self.registry.root)
            for name, stamp in sorted(now.items()):
                if self._stamps.get(name) != stamp:
                    self._stamps[name] = stamp
                    with contextlib.suppress(LoadFailed):  # logged; tried again when its files change
                        await self._load(name)
            for name in sorted(set(self._stamps) - set(now)):
                del self._stamps[name]
                try:
                    await self._unload(name)
                except ModelInUse:
                    log.error("model %s: gone from the repository, but it is the default model: it serves on", name)

    # -- both --

    async def _load(self, name: str) -> Change:
        try:
            change = await run_in_threadpool(self.registry.plan, name)
        except ModelLoadError as e:
            version = getattr(e, "version", "")
            metrics.MODEL_LOADS.labels(name, version, "failed").inc()
            log.error("model %s: load failed, what was serving serves on: %s", name, e)
            why = str(e).replace(f"{self.registry.root}/", "")  # the repository's paths, not the server's
            if version and (name, version) not in self.registry.planes:  # the index says why it does not serve
                self.registry.unavailable[(name, version)] = f"failed to load: {why}"
            raise LoadFailed(f"failed to load {name!r}: {why}; what was serving serves on") from None
        retired = self.registry.apply(change)
        self.registry.start()  # the fresh versions' batchers
        for version in change.fresh:
            metrics.MODEL_LOADS.labels(name, version, "ok").inc()
        if change.fresh or retired:
            log.info(
                "model %s: loaded %s; serving %s; stopped %s",
                name,
                ", ".join(change.fresh) or "nothing new",
                ", ".join(sorted(change.planes, key=int)),
                ", ".join(p.engine.spec.version for p in retired) or "none",
            )
        return change

    async def _unload(self, name: str) -> None:
        change = await run_in_threadpool(self.registry.unload_plan, name)
        retired = self.registry.apply(change)
        if retired:
            log.info("model %s: unloaded versions %s", name, ", ".join(p.engine.spec.version for p in retired))


def _in_repository(root: Path, name: str) -> bool:
    """Whether ``name`` is a model folder of the repository (never a path out of it)."""
    return name in repository.model_names(root)


def _look(root: Path) -> dict[str, Any]:
    """Each model's files as they are now. A repository that cannot be read is not an empty one: that look fails
    (and the next one tries again), rather than unloading every model."""
    if not root.is_dir():
        raise OSError(f"the model repository {root} cannot be read")
    return {name: repository.model_stamp(root, name) for name in repository.model_names(root)}


def of(state: Any) -> ModelControl:
    """The model control the lifespan put in an app's state, or NotReady while it loads."""
    control: ModelControl | None = getattr(state, "control", None)
    if control is None:
        raise NotReady
    return control
