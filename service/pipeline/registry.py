"""Every model and version of the repository, each with its own batcher and ``DataPlane``: loaded at start, and
again while serving when model control asks (``service.pipeline.control``).

``/predict`` and ``/model`` use the default model (``LSTM_MODEL_NAME``, or the repository's only model at start;
its latest serving version unless ``LSTM_MODEL_VERSION`` pins one); ``/v1/models/{name}/...``,
``/v2/models/{name}/...`` and the WebSocket stream pick any other. All of them share one admission.

A change to one model is built off the event loop (``plan``: each new or changed version loaded and warmed, the
others kept as they are) and applied on it at once (``apply``): from then on the registry hands out the new
versions. A version that stopped serving finishes the requests it admitted, then its batcher stops and its
ONNX Runtime session is released. A change that cannot be built changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anyio.to_thread import run_sync as run_in_threadpool

from .. import metrics
from ..model import repository
from ..model.engine import Engine, Wide
from ..model.errors import ModelLoadError
from ..settings import Settings, available_cpus
from ..state import open_store
from ..state.store import SequenceStore, Terms
from . import cores
from .batcher import Batcher
from .dataplane import Admission, DataPlane, inline_limit
from .errors import ModelInUse, NotReady, UnknownModel
from .rules import Limits
from .sequences import LEASE_S, Sequences

log = logging.getLogger(__name__)
LEFT_OUT = "not named by the model's version_policy"
UNLOADED = "unloaded"


class VersionLoadError(ModelLoadError):
    """One version of a model could not be loaded (its files, or the graph they hold)."""

    def __init__(self, name: str, version: str, why: str) -> None:
        super().__init__(why)
        self.name, self.version = name, version


@dataclass
class Change:
    """What one model serves after a load or unload: built off the event loop, applied on it."""

    name: str
    planes: dict[str, DataPlane]  # version -> request path, for every version that serves after the change
    stamps: dict[str, repository.Stamp]  # version -> its files when they were loaded
    unavailable: dict[str, str]  # version -> why it does not serve
    fresh: list[str] = field(default_factory=list)  # versions this change loaded (new, or files changed)


@dataclass
class Registry:
    planes: dict[tuple[str, str], DataPlane]  # (name, version) -> request path; replaced whole by a change
    default: tuple[str, str]
    admission: Admission
    store: SequenceStore  # server-held sequences, for every model
    build: Callable[[Path], DataPlane]  # a version folder's warmed request path (blocking)
    root: Path  # the model repository
    pinned: str | None = None  # LSTM_MODEL_VERSION: the default model's version, whatever else serves
    _forget: Callable[[], None] = lambda: None  # removes the store's own file, if it made one
    # versions in the repository that do not serve, and why: the model repository extension's index lists them
    unavailable: dict[tuple[str, str], str] = field(default_factory=dict)
    stamps: dict[tuple[str, str], repository.Stamp] = field(default_factory=dict)
    serving: dict[str, str] = field(default_factory=dict)  # name -> the version its unversioned routes serve
    _retiring: set[DataPlane] = field(default_factory=set)  # stopped serving, still answering what they admitted
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def load(cls, s: Settings) -> Registry:
        """Load and warm every model version (blocking: call it off the event loop)."""
        default_folder = repository.resolve(s.model_repository, s.model_name, s.model_version)
        limits = Limits.from_settings(s)
        admission = Admission(s.max_queue)
        terms = Terms(idle_s=s.sequence_idle_s, max_sequences=s.max_sequences, lease_s=LEASE_S)
        store, forget = open_store(s.state_url, terms)
        sequences = Sequences(store)

        board = cores.board() if s.wide_min_steps else None
        if board is not None:
            admission.post = board.post
        wide = None if board is None else Wide(available_cpus(), s.wide_min_steps, board.others_idle)

        def build(folder: Path) -> DataPlane:
            engine = Engine.load(
                folder, s.provider, s.intra_op_threads, s.inter_op_threads, s.chunk_steps, s.call_max_steps, wide=wide
            )
            engine.warmup()
            batcher = None
            if s.batching:
                batcher = Batcher(engine, s.batch_max_size, s.batch_max_delay_ms / 1000, s.call_max_steps)
            inline = inline_limit(engine, s.inline_max_steps)
            return DataPlane(engine, limits, batcher, admission, s.request_timeout_s, inline, sequences)

        default = (default_folder.parent.name, default_folder.name)
        pinned = str(s.model_version) if s.model_version is not None else None
        registry = cls({}, default, admission, store, build, s.model_repository, pinned, forget)
        for name in repository.model_names(s.model_repository):
            try:
                repository.version_policy(s.model_repository, name)
            except ModelLoadError as e:  # another model's broken configuration: that model alone does not serve
                log.error("model %s does not serve: %s", name, e)
                registry.unavailable |= {(name, str(v)): str(e) for v in repository.on_disk(s.model_repository, name)}
                continue
            registry.apply(registry.plan(name))
        return registry

    def plan(self, name: str) -> Change:
        """What the model serves from the repository as it is now (blocking: call it off the event loop).
        A version whose files are unchanged keeps its request path; raises ModelLoadError if any version
        cannot be loaded, or if the change would leave the default model without its version."""
        on_disk = repository.on_disk(self.root, name)
        if not on_disk:
            raise ModelLoadError(f"no model {name!r} in the repository {self.root} (expected {name}/<version>/)")
        serving = [str(v) for v in repository.versions(self.root, name)]
        if name == self.default[0]:
            if not serving:
                raise ModelLoadError(f"model {name!r} is the default model: its version_policy must name a version")
            if self.pinned is not None and self.pinned not in serving:
                raise ModelLoadError(
                    f"model {name!r} is the default model, pinned to version {self.pinned} by LSTM_MODEL_VERSION, "
                    f"which would no longer serve (serving would be: {', '.join(serving) or 'none'})"
                )
        change = Change(name, {}, {}, {str(v): LEFT_OUT for v in on_disk if str(v) not in serving})
        for version in serving:
            folder = self.root / name / version
            stamp = repository.version_stamp(folder)  # before loading: a file written meanwhile loads again
            kept = self.planes.get((name, version))
            if kept is not None and self.stamps.get((name, version)) == stamp:
                change.planes[version] = kept
            else:
                try:
                    change.planes[version] = self.build(folder)
                except ModelLoadError as e:
                    raise VersionLoadError(name, version, str(e)) from None
                except Exception as e:  # warm-up or the inline measure failed on what the files hold
                    log.exception("model %s version %s: loading failed", name, version)
                    raise VersionLoadError(name, version, f"{folder} failed to warm up: {e!r}") from None
                change.fresh.append(version)
            change.stamps[version] = stamp
        return change

    def unload_plan(self, name: str) -> Change:
        """The model serving nothing (blocking: it lists the repository). The default model is refused."""
        if name == self.default[0]:
            raise ModelInUse(
                f"model {name!r} is the default model (/predict): it cannot be unloaded; load a new version instead"
            )
        return Change(name, {}, {}, {str(v): UNLOADED for v in repository.on_disk(self.root, name)})

    def apply(self, change: Change) -> list[DataPlane]:
        """Serve what ``change`` says from now on, at once (on the event loop while serving); returns the versions
        it retired. The fresh versions' batchers start with ``start``."""
        name = change.name
        new = {(name, v): p for v, p in change.planes.items()}
        retired = [p for k, p in self.planes.items() if k[0] == name and new.get(k) is not p]
        self.planes = {k: p for k, p in self.planes.items() if k[0] != name} | new
        self.stamps = {k: s for k, s in self.stamps.items() if k[0] != name} | {
            (name, v): s for v, s in change.stamps.items()
        }
        self.unavailable = {k: w for k, w in self.unavailable.items() if k[0] != name} | {
            (name, v): w for v, w in change.unavailable.items()
        }
        if change.planes:
            self.serving[name] = preferred(change.planes)
            if name == self.default[0] and self.pinned is None:
                self.default = (name, self.serving[name])
        else:
            self.serving.pop(name, None)
        family = [change.planes[v] for v in sorted(change.planes, key=int, reverse=True)]
        for plane in change.planes.values():
            plane.family = family
        for plane in retired:
            self._retire(plane)
        for version in change.fresh:  # after the retired ones: a version loaded again is the same series
            plane = change.planes[version]
            metrics.MODEL_INFO.labels(name, version, plane.engine.provider).set(1)
        if retired:  # said in a sequence's error on every version that serves on, until those sequences expired
            stopped = ", ".join(sorted({p.engine.spec.version for p in retired}, key=int))
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            for plane in change.planes.values():
                plane.replaced = f"version {stopped} of model {name!r}, which stopped serving at {when}"
                plane.replaced_until = time.monotonic() + self.store.terms.idle_s
        return retired

    def _retire(self, plane: DataPlane) -> None:
        spec = plane.engine.spec
        metrics.MODEL_UNLOADS.labels(spec.name, spec.version).inc()
        metrics.MODEL_INFO.labels(spec.name, spec.version, plane.engine.provider).set(0)
        plane.retire()
        self._retiring.add(plane)
        task = asyncio.get_running_loop().create_task(self._free(plane))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _free(self, plane: DataPlane) -> None:
        """Once a retired version has answered what it admitted: stop its batcher, release its session."""
        await plane.drained.wait()
        spec = plane.engine.spec
        if plane.batcher is not None:
            await run_in_threadpool(plane.batcher.stop)
            if plane.batcher.running:  # a model call longer than the stop's wait: the collector frees it later
                log.warning(
                    "version %s of model %s: its batcher is still running; not released", spec.version, spec.name
                )
                self._retiring.discard(plane)
                return
        plane.engine.release()
        self._retiring.discard(plane)
        log.info("version %s of model %s freed", spec.version, spec.name)

    async def wait_freed(self) -> None:
        """Wait until every retired version is freed."""
        while self._tasks:
            await asyncio.gather(*self._tasks)

    def start(self) -> None:
        """Start the batchers of what serves that have not started: at start, and after each change."""
        for p in self.planes.values():
            if p.batcher is not None and not p.batcher.started:
                p.batcher.start()

    def stop(self) -> None:
        for p in [*self.planes.values(), *self._retiring]:
            if p.batcher is not None and p.batcher.started:
                p.batcher.stop()

    async def close(self) -> None:
        """Stop every batcher, retired versions' included (off the event loop), and close the sequence store."""
        for task in self._tasks:
            task.cancel()
        await run_in_threadpool(self.stop)
        await self.store.close()
        self._forget()

    @property
    def default_plane(self) -> DataPlane:
        return self.planes[self.default]

    def versions(self, name: str) -> list[str]:
        found = sorted((v for n, v in self.planes if n == name), key=int)
        if not found:
            if any(n == name for n, _ in self.unavailable):
                raise UnknownModel(f"Model {name!r} has no version serving; the repository index says why")
            raise UnknownModel(f"No model {name[:64]!r}; models: {', '.join(self.names())}")
        return found

    def names(self) -> list[str]:
        return sorted({n for n, _ in self.planes})

    def index(self) -> list[tuple[str, str, str]]:
        """Every version in the repository: name, version, and why it does not serve ("" where it does)."""
        entries = [(n, v, "") for n, v in self.planes] + [(n, v, why) for (n, v), why in self.unavailable.items()]
        return sorted(entries, key=lambda e: (e[0], int(e[1])))

    def get(self, name: str, version: str | None = None) -> DataPlane:
        """A model's request path: the pinned version for the default model, else the latest, unless asked."""
        if version is None:
            version = self.default[1] if name == self.default[0] else self.serving.get(name, "")
        plane = self.planes.get((name, version))
        if plane is None:
            versions = self.versions(name)  # UnknownModel if none serves
            raise UnknownModel(f"Model {name!r} has no version {version[:32]!r}; versions: {', '.join(versions)}")
        return plane


def preferred(planes: dict[str, DataPlane]) -> str:
    """The version a model's unversioned routes serve: its highest that answers exactly. An int8 version serves
    only when named (or pinned by LSTM_MODEL_VERSION): its activations are quantized with a scale made per
    ONNX Runtime call, so its answers move with what else the call holds (other sequences, a chunk's length)
    and a stream sent in chunks is not one whole call."""
    exact = [v for v, p in planes.items() if p.engine.spec.exact]
    return max(exact or planes, key=int)


def of(state: Any) -> Registry:
    """The registry the lifespan put in an app's state, or NotReady while it loads."""
    registry: Registry | None = getattr(state, "registry", None)
    if registry is None:
        raise NotReady
    return registry
