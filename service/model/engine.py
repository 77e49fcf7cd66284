"""The model in ONNX Runtime: loading, provider choice, and batched prediction. Knows nothing of HTTP."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .. import metrics
from ..settings import WIDE_MIN_PADDED_STEPS, WIDE_MIN_ROWS, Settings
from . import schedule
from .batch import Batch, SequenceResult
from .contract import INPUTS, METADATA_FILE, MODEL_FILE, OUTPUTS, ModelSpec
from .errors import ExplainUnavailable, ModelLoadError
from .explain import Explainer

log = logging.getLogger(__name__)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
_NUMPY_TYPES = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}
_OUTPUTS = list(OUTPUTS)
# The defaults of LSTM_CHUNK_STEPS and LSTM_CALL_MAX_STEPS (Settings says what they mean).
CHUNK_STEPS: int = Settings.model_fields["chunk_steps"].default
CALL_MAX_STEPS: int = Settings.model_fields["call_max_steps"].default
SHRINK_STEPS = 4096  # after a call larger than this, the CPU arena returns what the call took
_SHRINK = ort.RunOptions()
_SHRINK.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


@dataclass(eq=False)
class Wide:
    """Large calls on every core while the server's other workers are idle (``pipeline.cores``): ``threads``
    for a second session, used for a CPU call of at least ``min_steps`` sequences x padded steps (and of
    WIDE_MIN_ROWS sequences and WIDE_MIN_PADDED_STEPS steps) when ``others_idle()`` says so and no other
    model call runs in this process (one Wide per process: every engine's calls count, whatever thread)."""

    threads: int
    min_steps: int
    others_idle: Callable[[], bool]
    running: int = 0  # model calls in progress in this process
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> bool:
        """One more call in progress; whether it is the only one."""
        with self.lock:
            self.running += 1
            return self.running == 1

    def end(self) -> None:
        with self.lock:
            self.running -= 1


def _read_metadata(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / METADATA_FILE).read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{folder / METADATA_FILE} is missing") from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{folder / METADATA_FILE} is unreadable: {e}") from None
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{folder / METADATA_FILE} is not a JSON object")
    return meta


def _spec(folder: Path, meta: dict[str, Any], session: ort.InferenceSession, revision: str) -> ModelSpec:
    """Check that the graph has the signature the service drives and that metadata agrees with it."""
    where = folder / MODEL_FILE
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if set(inputs) != set(INPUTS) or set(outputs) != set(OUTPUTS):
        raise ModelLoadError(
            f"{where}: inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
            f"the service needs inputs {list(INPUTS)} and outputs {list(OUTPUTS)}"
        )
    x_shape, h_shape, y_shape = inputs["x"].shape, inputs["h0"].shape, outputs["y"].shape
    graph_dims = {"input_size": x_shape[-1], "num_layers": h_shape[0], "hidden_size": h_shape[-1]}
    if len(y_shape) == 3 and isinstance(y_shape[-1], int):
        graph_dims["output_size"] = y_shape[-1]
    try:
        spec = ModelSpec(
            # The repository's folders name the model and version (as in Triton), whatever the file says.
            name=folder.parent.name,
            version=folder.name,
            input_size=int(meta["input_size"]),
            output_size=int(meta["output_size"]),
            hidden_size=int(meta["hidden_size"]),
            num_layers=int(meta["num_layers"]),
            feature_names=[str(n) for n in meta["feature_names"]],
            target_names=[str(n) for n in meta["target_names"]],
            metadata=meta,
            revision=revision,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{folder / METADATA_FILE}: missing or malformed field {e}") from None
    for key, dim in graph_dims.items():
        if dim != getattr(spec, key):
            raise ModelLoadError(f"{where}: the graph's {key} is {dim} but {METADATA_FILE} says {getattr(spec, key)}")
    if len(spec.feature_names) != spec.input_size or len(spec.target_names) != spec.output_size:
        raise ModelLoadError(f"{folder / METADATA_FILE}: feature or target names do not match the sizes")
    try:
        spec.horizons  # noqa: B018 (read and checked now, not at the first forecast)
    except ValueError as e:
        raise ModelLoadError(f"{folder / METADATA_FILE}: {e}") from None
    means = meta.get("feature_means")
    if means is not None and not (
        isinstance(means, list)
        and len(means) == spec.input_size
        and all(isinstance(m, int | float) and not isinstance(m, bool) and math.isfinite(m) for m in means)
    ):
        raise ModelLoadError(f"{folder / METADATA_FILE}: feature_means must be {spec.input_size} finite numbers")
    return spec


def _digest(graph: bytes) -> str:
    return hashlib.sha256(graph).hexdigest()[:16]


def _preload_cuda_wheels() -> None:
    """Make the CUDA and cuDNN libraries of the nvidia-* wheels (onnxruntime-gpu's pip extras) loadable."""
    if importlib.util.find_spec("nvidia") is not None and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()


def _session_options(intra_op_threads: int | None, inter_op_threads: int, spin: bool = True) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads or 0  # 0: ONNX Runtime's choice
    opts.inter_op_num_threads = inter_op_threads
    if not spin:  # idle threads sleep at once instead of spinning on cores that other workers use
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class Engine:
    """One loaded model. ``predict`` takes a batch and returns one result per sequence, in order."""

    def __init__(
        self,
        spec: ModelSpec,
        session: ort.InferenceSession,
        folder: Path,
        chunk_steps: int = CHUNK_STEPS,
        call_max_steps: int = CALL_MAX_STEPS,
        wide: Wide | None = None,
        wide_session: ort.InferenceSession | None = None,
    ) -> None:
        self.spec = spec
        self.session = session
        self.wide, self.wide_session = wide, wide_session  # when to use every core, and the session that does
        self.wide_calls = 0  # calls that ran on it
        self.folder = folder
        self.chunk_steps = chunk_steps
        self.call_max_steps = max(call_max_steps, chunk_steps)  # a chunk of one sequence always fits
        self.steps_run = 0  # sequences x padded steps of every ONNX Runtime call: the work really done
        self.providers: list[str] = session.get_providers()  # what actually runs, fallbacks included
        self.lengths_dtype = _NUMPY_TYPES.get({i.name: i.type for i in session.get_inputs()}["lengths"], np.int32)
        self._explainer: Explainer | None = None  # built on the first explain request
        self._explainer_lock = threading.Lock()

    @property
    def provider(self) -> str:
        return self.providers[0]

    @property
    def device(self) -> str:
        return "cuda" if self.provider == CUDA else "cpu"

    @classmethod
    def load(
        cls,
        folder: Path,
        provider: str = "auto",
        intra_op_threads: int | None = 0,
        inter_op_threads: int = 1,
        chunk_steps: int = CHUNK_STEPS,
        call_max_steps: int = CALL_MAX_STEPS,
        *,
        wide: Wide | None = None,
    ) -> Engine:
        """Load <folder>/model.onnx. ``provider``: auto (CUDA where usable, else CPU), cuda (required) or cpu.
        ``wide``: also a session on more threads than ``intra_op_threads``, for large calls (CPU only)."""
        model_path = folder / MODEL_FILE
        if not model_path.is_file():
            raise ModelLoadError(f"{model_path} is missing")
        meta = _read_metadata(folder)
        want_cuda = provider == "cuda" or (provider == "auto" and CUDA in ort.get_available_providers())
        if provider == "auto":
            # A failed CUDA attempt is expected on CPU hosts and ONNX Runtime prints it as an error;
            # this service reports the outcome itself (below, and in GET /model).
            ort.set_default_logger_severity(4)
        providers = [CUDA, CPU] if want_cuda else [CPU]
        if want_cuda:
            _preload_cuda_wheels()
        try:
            revision = _digest(model_path.read_bytes())
            options = _session_options(intra_op_threads, inter_op_threads)
            session = ort.InferenceSession(str(model_path), options, providers=providers)  # external data works
        except Exception as e:  # ONNX Runtime raises its own exception types for corrupt or unreadable files
            raise ModelLoadError(f"{model_path} cannot be loaded by ONNX Runtime: {e}") from None
        actual = session.get_providers()
        if provider == "cuda" and actual[0] != CUDA:
            raise ModelLoadError(
                f"LSTM_PROVIDER=cuda but ONNX Runtime runs {actual[0]}: no usable GPU or CUDA libraries "
                f"(available providers: {ort.get_available_providers()})"
            )
        if want_cuda and actual[0] != CUDA:
            log.warning("CUDA is not usable here; ONNX Runtime fell back to %s", actual[0])
        wide_session = None
        spec = _spec(folder, meta, session, revision)
        # An int8 version's answers move with its thread count (ModelSpec.exact): it keeps to its own.
        if wide is not None and spec.exact and actual[0] == CPU and wide.threads > (intra_op_threads or 0) > 0:
            try:
                options = _session_options(wide.threads, inter_op_threads, spin=False)
                wide_session = ort.InferenceSession(str(model_path), options, providers=[CPU])
            except Exception as e:  # as above
                raise ModelLoadError(f"{model_path} cannot be loaded by ONNX Runtime: {e}") from None
        if _digest(model_path.read_bytes()) != revision:  # the revision must name the bytes the sessions hold
            raise ModelLoadError(f"{model_path} changed while it was loading: load it again")
        wide = wide if wide_session is not None else None
        engine = cls(spec, session, folder, chunk_steps, call_max_steps, wide, wide_session)
        log.info("loaded %s version %s on %s", engine.spec.name, engine.spec.version, engine.provider)
        return engine

    def _run(self, x: np.ndarray, h0: np.ndarray, c0: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """One ONNX Runtime call on a padded batch. A call larger than SHRINK_STEPS gives the memory its
        activations took back to the system afterwards: ONNX Runtime's arena otherwise keeps its peak."""
        feeds = self._feeds(x, h0, c0, lengths)
        rows, padded = x.shape[:2]
        options = _SHRINK if rows * padded > SHRINK_STEPS else None
        self.steps_run += rows * padded
        wide, wide_session = self.wide, self.wide_session
        if wide is None or wide_session is None:
            out: list[np.ndarray] = self.session.run(_OUTPUTS, feeds, options)
            return out
        alone = wide.start()
        try:
            large = rows >= WIDE_MIN_ROWS and padded >= WIDE_MIN_PADDED_STEPS and rows * padded >= wide.min_steps
            if not (alone and large and wide.others_idle()):
                out = self.session.run(_OUTPUTS, feeds, options)
                return out
            out = wide_session.run(_OUTPUTS, feeds, options)
            self.wide_calls += 1  # alone in the process: no other call counts at once
            metrics.WIDE_CALLS.labels(self.spec.name, self.spec.version).inc()
            return out
        finally:
            wide.end()

    def _feeds(self, x: np.ndarray, h0: np.ndarray, c0: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(INPUTS, (x, h0, c0, lengths.astype(self.lengths_dtype, copy=False)), strict=True))

    def predict(self, batch: Batch) -> list[SequenceResult]:
        """One result per sequence, in order: exactly its own steps and the states after its own last step."""
        ys: list[np.ndarray] | np.ndarray
        if batch.equal and batch.longest <= self.chunk_steps and batch.steps <= self.call_max_steps:
            # Equal lengths that fit one call (the common case): no padding to plan.
            x = batch.x[0][None] if batch.size == 1 else np.stack(batch.x)
            ys, hn, cn = self._run(x, batch.h0, batch.c0, batch.lengths)
        else:
            ys, hn, cn = self._scheduled(batch)
        # Batch-major and contiguous, so each sequence's slice is contiguous too (fast encoding).
        hn = np.ascontiguousarray(hn.transpose(1, 0, 2))
        cn = np.ascontiguousarray(cn.transpose(1, 0, 2))
        return [SequenceResult(ys[i], hn[i], cn[i]) for i in range(batch.size)]

    def _scheduled(self, batch: Batch) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Sequences of unequal or great length: length groups and time chunks (``schedule``), states carried."""
        h, c = batch.h0.copy(), batch.c0.copy()
        ys = [np.empty((n, self.spec.output_size), dtype=np.float32) for n in batch.lengths.tolist()]
        features = self.spec.input_size
        for wave in schedule.plan(batch.lengths, self.chunk_steps, self.call_max_steps):
            for call in wave:
                x = np.zeros((len(call.rows), call.padded, features), dtype=np.float32)
                end = call.start + call.padded
                for r, i in enumerate(call.rows.tolist()):
                    part = batch.x[i][call.start : end]
                    x[r, : len(part)] = part
                y, hn, cn = self._run(x, h[:, call.rows], c[:, call.rows], call.steps)
                h[:, call.rows], c[:, call.rows] = hn, cn
                for r, (i, n) in enumerate(zip(call.rows.tolist(), call.steps.tolist(), strict=True)):
                    ys[i][call.start : call.start + n] = y[r, :n]
        return ys, h, c

    def explain(self, batch: Batch) -> list[dict[str, np.ndarray]]:
        """Per sequence: gates, candidates and states [L, T_i, H] from the numpy reference (slow path)."""
        with self._explainer_lock:
            if self._explainer is None:
                graph = (self.folder / MODEL_FILE).read_bytes()
                if _digest(graph) != self.spec.revision:  # never gates from weights other than those that run
                    raise ExplainUnavailable("its file changed on disk since it was loaded: load it again")
                self._explainer = Explainer.from_onnx(graph)
        explainer = self._explainer
        return [explainer.explain(x, batch.h0[:, i], batch.c0[:, i]) for i, x in enumerate(batch.x)]

    def release(self) -> None:
        """Let go of the ONNX Runtime sessions (the model's, and the explainer's if built), so that their memory
        returns now: for a version that stopped serving and answered what it admitted. Nothing runs after."""
        del self.session
        self.wide = self.wide_session = None
        self._explainer = None

    def warmup(self) -> None:
        """One small inference on each session, so the first request does not pay for lazy initialisation."""
        x = np.zeros((2, self.spec.input_size), dtype=np.float32)
        x += np.asarray(self.spec.metadata.get("feature_means", 0.0), dtype=np.float32)
        self.predict(Batch([x], *self.spec.zero_states(1)))
        if self.wide_session is not None:  # its threads start on its first call
            x = np.zeros((2, WIDE_MIN_PADDED_STEPS, self.spec.input_size), dtype=np.float32)
            lengths = np.full(2, WIDE_MIN_PADDED_STEPS)
            self.wide_session.run(_OUTPUTS, self._feeds(x, *self.spec.zero_states(2), lengths))
