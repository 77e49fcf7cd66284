"""Every model and version of the repository, loaded, each with its own batcher and ``DataPlane``.

``/predict`` and ``/model`` use the default model (``LSTM_MODEL_NAME``, or the repository's only
model; its latest version unless ``LSTM_MODEL_VERSION`` pins one); ``/v1/models/{name}/...``,
``/v2/models/{name}/...`` and the WebSocket stream pick any other. All of them share one admission.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from anyio.to_thread import run_sync as run_in_threadpool

from .. import metrics
from ..model import repository
from ..model.engine import Engine
from ..model.errors import ModelLoadError
from ..settings import Settings
from ..state import open_store
from ..state.store import SequenceStore, Terms
from .batcher import Batcher
from .dataplane import Admission, DataPlane, inline_limit
from .errors import NotReady, UnknownModel
from .rules import Limits
from .sequences import LEASE_S, Sequences

log = logging.getLogger(__name__)


@dataclass
class Registry:
    planes: dict[tuple[str, str], DataPlane]  # (name, version) -> request path
    default: tuple[str, str]
    admission: Admission
    store: SequenceStore  # server-held sequences, for every model
    _forget: Callable[[], None] = lambda: None  # removes the store's own file, if it made one
    # versions in the repository that do not serve, and why: the model repository extension's index lists them
    unavailable: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def load(cls, s: Settings) -> Registry:
        """Load and warm every model version (blocking: call it off the event loop)."""
        default_folder = repository.resolve(s.model_repository, s.model_name, s.model_version)
        limits = Limits.from_settings(s)
        admission = Admission(s.max_queue)
        terms = Terms(idle_s=s.sequence_idle_s, max_sequences=s.max_sequences, lease_s=LEASE_S)
        store, forget = open_store(s.state_url, terms)
        sequences = Sequences(store)
        planes: dict[tuple[str, str], DataPlane] = {}
        unavailable: dict[tuple[str, str], str] = {}
        for name in repository.model_names(s.model_repository):
            try:
                serving = repository.versions(s.model_repository, name)
                why = "not named by the model's version_policy"
            except ModelLoadError as e:  # another model's broken configuration: that model alone does not serve
                serving, why = [], str(e)
                log.error("model %s does not serve: %s", name, e)
            for version in sorted(set(repository.on_disk(s.model_repository, name)) - set(serving)):
                unavailable[(name, str(version))] = why
            for version in serving:
                folder = s.model_repository / name / str(version)
                engine = Engine.load(
                    folder, s.provider, s.intra_op_threads, s.inter_op_threads, s.chunk_steps, s.call_max_steps
                )
                engine.warmup()
                batcher = None
                if s.batching:
                    batcher = Batcher(engine, s.batch_max_size, s.batch_max_delay_ms / 1000, s.call_max_steps)
                inline = inline_limit(engine, s.inline_max_steps)
                planes[(name, str(version))] = DataPlane(
                    engine, limits, batcher, admission, s.request_timeout_s, inline, sequences
                )
                metrics.MODEL_INFO.labels(name, str(version), engine.provider).set(1)
        default = (default_folder.parent.name, default_folder.name)
        return cls(planes, default, admission, store, forget, unavailable)

    def start(self) -> None:
        for p in self.planes.values():
            if p.batcher is not None:
                p.batcher.start()

    def stop(self) -> None:
        for p in self.planes.values():
            if p.batcher is not None:
                p.batcher.stop()

    async def close(self) -> None:
        """Stop the batchers (off the event loop) and close the sequence store."""
        await run_in_threadpool(self.stop)
        await self.store.close()
        self._forget()

    @property
    def default_plane(self) -> DataPlane:
        return self.planes[self.default]

    def versions(self, name: str) -> list[str]:
        found = sorted((v for n, v in self.planes if n == name), key=int)
        if not found:
            raise UnknownModel(f"No model {name!r}; models: {', '.join(self.names())}")
        return found

    def names(self) -> list[str]:
        return sorted({n for n, _ in self.planes})

    def index(self) -> list[tuple[str, str, str]]:
        """Every version in the repository: name, version, and why it does not serve ("" where it does)."""
        entries = [(n, v, "") for n, v in self.planes] + [(n, v, why) for (n, v), why in self.unavailable.items()]
        return sorted(entries, key=lambda e: (e[0], int(e[1])))

    def get(self, name: str, version: str | None = None) -> DataPlane:
        """A model's request path: the pinned version for the default model, else the latest, unless asked."""
        versions = self.versions(name)
        if version is None:
            version = self.default[1] if name == self.default[0] else versions[-1]
        if (name, version) not in self.planes:
            raise UnknownModel(f"Model {name!r} has no version {version}; versions: {', '.join(versions)}")
        return self.planes[(name, version)]


def of(state: Any) -> Registry:
    """The registry the lifespan put in an app's state, or NotReady while it loads."""
    registry: Registry | None = getattr(state, "registry", None)
    if registry is None:
        raise NotReady
    return registry
