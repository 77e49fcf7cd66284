"""Model control while serving (``LSTM_MODEL_CONTROL``), Triton's three modes.

- ``none``: what loaded at start serves until the server stops.
- ``poll``: every ``LSTM_REPOSITORY_POLL_S`` each worker looks at the repository. A model whose files changed
  (its ``config.pbtxt``, a version added, removed or rewritten) is loaded again; a model gone from it is unloaded.
  A load that fails is logged, and tried again once the model's files change again.
- ``explicit``: loads and unloads on request only (the model repository extension's ``load`` and ``unload``).
  With several workers, the worker that answers applies the change and writes it to the server's control
  journal (a file its workers share); the others apply it within ``FOLLOW_S``.

A load builds each new or changed version and warms it off the event loop, then swaps it in at once; requests
already admitted finish on the version they started on, which is freed when they are done (``Registry``). A load
that fails leaves what was serving untouched, and says why. One change at a time per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from anyio.to_thread import run_sync as run_in_threadpool

from .. import metrics
from ..model import repository
from ..model.errors import ModelLoadError
from ..settings import CONTROL_JOURNAL_ENV, Settings
from .errors import LoadFailed, ModelControlOff, ModelInUse, NotReady, UnknownModel
from .registry import Change, Registry

log = logging.getLogger(__name__)
FOLLOW_S = 0.5  # how often a worker looks at the control journal


class Journal:
    """The explicit loads and unloads of one server, in order, in a file its workers share:
    ``{"last": n, "models": {name: [n, "load" | "unload"]}}`` (the last change of each model)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, tuple[int, str]]:
        """The last change of each model; nothing from a file that is missing or not the journal's shape."""
        try:
            data = json.loads(self.path.read_text())
            return {str(name): (int(n), str(action)) for name, (n, action) in data["models"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def record(self, name: str, action: str) -> int:
        """Write one change; returns its number."""
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self.path.read_text())
                int(data["last"]), dict(data["models"])
            except (OSError, ValueError, KeyError, TypeError):
                data = {"last": max((n for n, _ in self.read().values()), default=0), "models": {}}
            data["last"] += 1
            data["models"][name] = [data["last"], action]
            temporary = self.path.with_suffix(f".{os.getpid()}")
            temporary.write_text(json.dumps(data))
            temporary.replace(self.path)
            return int(data["last"])


class ModelControl:
    def __init__(self, registry: Registry, mode: str, poll_s: float, journal: Journal | None = None) -> None:
        self.registry = registry
        self.mode = mode
        self.poll_s = poll_s
        self.journal = journal if mode == "explicit" else None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stamps: dict[str, Any] = {}  # poll: each model's files as last seen
        self._seen: dict[str, int] = {}  # explicit: the journal's changes this worker has applied

    @classmethod
    def create(cls, s: Settings) -> ModelControl:
        """Load the registry and set up control (blocking: call it off the event loop)."""
        stamps = _look(s.model_repository) if s.model_control == "poll" else {}  # before loading: no change missed
        path = os.environ.get(CONTROL_JOURNAL_ENV)
        control = cls(Registry.load(s), s.model_control, s.repository_poll_s, Journal(Path(path)) if path else None)
        control._stamps = stamps
        return control

    def start(self) -> None:
        if self.mode == "poll":
            self._task = asyncio.get_running_loop().create_task(self._every(self.poll_s, self.poll))
        elif self.journal is not None:
            self._task = asyncio.get_running_loop().create_task(self._every(FOLLOW_S, self.follow))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _every(self, seconds: float, step: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except Exception:  # a look that failed is tried again next time; the loop never ends on it
                log.exception("model control: %s failed", step.__name__)

    # -- on request (explicit) --

    def _explicit(self, action: str) -> None:
        if self.mode != "explicit":
            raise ModelControlOff(
                f"this server's model control is {self.mode!r} (LSTM_MODEL_CONTROL): models {action} on request "
                "only with 'explicit'"
            )

    async def load(self, name: str) -> Change:
        """Load a model of the repository, or load it again: new and changed versions swap in, the rest stay."""
        self._explicit("load")
        if not await run_in_threadpool(_in_repository, self.registry.root, name):
            raise UnknownModel(f"No model {name!r} in the repository to load")
        async with self._lock:
            change = await self._load(name)
            await self._record(name, "load")
        return change

    async def unload(self, name: str) -> None:
        """Stop serving every version of a model (the default model is refused: ``ModelInUse``)."""
        self._explicit("unload")
        if not any(n == name for n, _, _ in self.registry.index()):
            raise UnknownModel(f"No model {name!r} to unload; models: {', '.join(self.registry.names())}")
        async with self._lock:
            await self._unload(name)
            await self._record(name, "unload")

    async def _record(self, name: str, action: str) -> None:
        if self.journal is not None:
            self._seen[name] = await run_in_threadpool(self.journal.record, name, action)

    async def follow(self) -> None:
        """Apply the changes other workers made on request (explicit, several workers)."""
        assert self.journal is not None
        changes = await run_in_threadpool(self.journal.read)
        async with self._lock:
            for name, (n, action) in sorted(changes.items(), key=lambda c: c[1][0]):
                if self._seen.get(name, 0) >= n:
                    continue
                self._seen[name] = n
                with contextlib.suppress(LoadFailed, ModelInUse):  # logged where it failed
                    await (self._load(name) if action == "load" else self._unload(name))

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
            metrics.MODEL_LOADS.labels(name, getattr(e, "version", ""), "failed").inc()
            log.error("model %s: load failed, what was serving serves on: %s", name, e)
            raise LoadFailed(f"failed to load {name!r}: {e}; what was serving serves on") from None
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
