"""Every model and version of the repository, loaded, each with its own batcher and pipeline.

``/predict`` and ``/model`` use the default model (``LSTM_MODEL_NAME``, or the repository's only
model; its latest version unless ``LSTM_MODEL_VERSION`` pins one); ``/v1/models/{name}/...``
pick any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import metrics, repository
from .batcher import Batcher
from .engine import Engine
from .errors import UnknownModel
from .payload import Limits
from .predictor import Predictor
from .settings import Settings


@dataclass
class Registry:
    predictors: dict[tuple[str, str], Predictor]  # (name, version) -> pipeline
    default: tuple[str, str]

    @classmethod
    def load(cls, s: Settings) -> Registry:
        """Load and warm every model version (blocking: call it off the event loop)."""
        default_folder = repository.resolve(s.model_repository, s.model_name, s.model_version)
        limits = Limits(s.max_batch_size, s.max_steps, s.explain_max_values, s.max_body_bytes, s.max_total_values)
        predictors: dict[tuple[str, str], Predictor] = {}
        for name in repository.model_names(s.model_repository):
            for version in repository.versions(s.model_repository, name):
                folder = s.model_repository / name / str(version)
                engine = Engine.load(folder, s.provider, s.intra_op_threads, s.inter_op_threads)
                engine.warmup()
                batcher = None
                if s.batching:
                    batcher = Batcher(engine, s.batch_max_size, s.batch_max_delay_ms / 1000, s.batch_max_padded_steps)
                predictors[(name, str(version))] = Predictor(engine, limits, batcher, s.request_timeout_s, s.max_queue)
                metrics.MODEL_INFO.labels(name, str(version), engine.provider).set(1)
        return cls(predictors, (default_folder.parent.name, default_folder.name))

    def start(self) -> None:
        for p in self.predictors.values():
            if p.batcher is not None:
                p.batcher.start()

    def stop(self) -> None:
        for p in self.predictors.values():
            if p.batcher is not None:
                p.batcher.stop()

    @property
    def default_predictor(self) -> Predictor:
        return self.predictors[self.default]

    def versions(self, name: str) -> list[str]:
        found = sorted((v for n, v in self.predictors if n == name), key=int)
        if not found:
            raise UnknownModel(f"No model {name!r}; models: {', '.join(self.names())}")
        return found

    def names(self) -> list[str]:
        return sorted({n for n, _ in self.predictors})

    def get(self, name: str, version: str | None = None) -> Predictor:
        """A model's pipeline: the pinned version for the default model, else the latest, unless asked."""
        versions = self.versions(name)
        if version is None:
            version = self.default[1] if name == self.default[0] else versions[-1]
        if (name, version) not in self.predictors:
            raise UnknownModel(f"Model {name!r} has no version {version}; versions: {', '.join(versions)}")
        return self.predictors[(name, version)]
