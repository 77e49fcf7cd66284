import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.model import repository
from service.model.batch import Batch
from service.model.engine import Engine, Wide
from service.model.errors import ModelLoadError

from .conftest import windows


@pytest.fixture(scope="module")
def engine(repo: Path) -> Engine:
    return Engine.load(repo / "tiny" / "1", provider="cpu")


def _batch(engine: Engine, seqs: list[np.ndarray]) -> Batch:
    return Batch([s.astype(np.float32) for s in seqs], *engine.spec.zero_states(len(seqs)))


def test_reports_the_provider_that_actually_runs(engine: Engine) -> None:
    assert engine.providers == engine.session.get_providers()
    assert engine.provider == "CPUExecutionProvider" and engine.device == "cpu"


def test_auto_reports_what_onnx_runtime_fell_back_to(repo: Path) -> None:
    e = Engine.load(repo / "tiny" / "1", provider="auto")
    assert e.provider == e.session.get_providers()[0]
    assert e.device == ("cuda" if e.provider == "CUDAExecutionProvider" else "cpu")


def test_cuda_required_without_a_gpu_fails_clearly(repo: Path) -> None:
    probe = Engine.load(repo / "tiny" / "1", provider="auto")
    if probe.device == "cuda":
        assert Engine.load(repo / "tiny" / "1", provider="cuda").device == "cuda"
    else:
        with pytest.raises(ModelLoadError, match="LSTM_PROVIDER=cuda"):
            Engine.load(repo / "tiny" / "1", provider="cuda")


def test_one_result_per_sequence_in_order_with_its_own_steps(
    engine: Engine, weather: np.ndarray, rng: np.random.Generator
) -> None:
    seqs = windows(weather, [5, 1, 12, 3], rng)
    results = engine.predict(_batch(engine, seqs))
    assert [r.outputs.shape for r in results] == [(5, 1), (1, 1), (12, 1), (3, 1)]
    for seq, r in zip(seqs, results, strict=True):
        alone = engine.predict(_batch(engine, [seq]))[0]
        np.testing.assert_allclose(r.outputs, alone.outputs, atol=1e-5)
        np.testing.assert_allclose(r.hn, alone.hn, atol=1e-6)
        np.testing.assert_allclose(r.cn, alone.cn, atol=1e-6)
        assert r.hn.shape == (2, 8) and r.hn.flags.c_contiguous and r.outputs.flags.c_contiguous


def test_repository_picks_the_latest_version_unless_pinned(repo: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    for v in (1, 2, 10):
        shutil.copytree(repo / "tiny" / "1", root / "tiny" / str(v))
    (root / "tiny" / "notes").mkdir()
    (root / "tiny" / "config.pbtxt").write_text("version_policy: { all: {} }")
    assert repository.versions(root, "tiny") == [1, 2, 10]
    assert repository.resolve(root, None, None) == root / "tiny" / "10"
    assert repository.resolve(root, "tiny", 2) == root / "tiny" / "2"
    with pytest.raises(ModelLoadError, match="no version 3 to serve: it is not in the repository"):
        repository.resolve(root, "tiny", 3)
    with pytest.raises(ModelLoadError, match="no model 'other'"):
        repository.resolve(root, "other", None)
    shutil.copytree(repo / "tiny", root / "second")
    with pytest.raises(ModelLoadError, match="set LSTM_MODEL_NAME"):
        repository.resolve(root, None, None)


@pytest.fixture()
def model_copy(repo: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "m" / "1"
    shutil.copytree(repo / "tiny" / "1", folder)
    return folder


def test_missing_model_file(model_copy: Path) -> None:
    (model_copy / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.onnx is missing"):
        Engine.load(model_copy, provider="cpu")


def test_corrupt_model_file(model_copy: Path) -> None:
    (model_copy / "model.onnx").write_bytes(b"\x08\x07not an onnx file" * 10)
    with pytest.raises(ModelLoadError, match="cannot be loaded by ONNX Runtime"):
        Engine.load(model_copy, provider="cpu")


def test_metadata_that_disagrees_with_the_graph(model_copy: Path) -> None:
    meta = json.loads((model_copy / "metadata.json").read_text())
    meta["hidden_size"] = 64
    (model_copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"hidden_size is 8 but metadata\.json says 64"):
        Engine.load(model_copy, provider="cpu")


def test_missing_metadata(model_copy: Path) -> None:
    (model_copy / "metadata.json").unlink()
    with pytest.raises(ModelLoadError, match=r"metadata\.json is missing"):
        Engine.load(model_copy, provider="cpu")


class Idle:
    """The other workers as a wide engine sees them: idle or not, as a test says."""

    def __init__(self) -> None:
        self.now = True

    def __call__(self) -> bool:
        return self.now


@pytest.fixture(scope="module")
def wide_engine(repo: Path) -> tuple[Engine, Idle]:
    idle = Idle()
    return Engine.load(repo / "tiny" / "1", "cpu", intra_op_threads=1, wide=Wide(2, 160, idle)), idle


def wide_count() -> float:
    return REGISTRY.get_sample_value("lstm_wide_calls_total", {"model": "tiny", "version": "1"}) or 0.0


def test_the_wide_session_runs_on_every_core_without_spinning(wide_engine: tuple[Engine, Idle]) -> None:
    engine, _ = wide_engine
    assert engine.wide_session is not None
    options = engine.wide_session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert engine.session.get_session_options().intra_op_num_threads == 1


def test_a_large_call_runs_on_every_core_only_while_the_other_workers_are_idle(
    wide_engine: tuple[Engine, Idle], weather: np.ndarray, rng: np.random.Generator
) -> None:
    engine, idle = wide_engine
    assert engine.wide is not None
    calls, counted = engine.wide_calls, wide_count()

    def wide_after(lengths: list[int], others_idle: bool = True) -> int:
        nonlocal calls
        idle.now = others_idle
        engine.predict(_batch(engine, windows(weather, lengths, rng)))
        ran, calls = engine.wide_calls - calls, engine.wide_calls
        return ran

    assert wide_after([20] * 8) == 1  # 8 sequences x 20 steps = 160: large enough
    assert wide_after([20] * 8, others_idle=False) == 0  # another worker has had requests in progress
    assert wide_after([16] * 9) == 0  # 144 steps: below the setting
    assert wide_after([40] * 7) == 0  # 280 steps, of fewer than WIDE_MIN_ROWS sequences
    assert wide_after([12] * 16) == 0  # 192 steps, of fewer than WIDE_MIN_PADDED_STEPS each
    engine.wide.start()  # another call runs in this process (another model, another thread)
    try:
        assert wide_after([20] * 8) == 0
    finally:
        engine.wide.end()
    assert engine.wide.running == 0
    assert wide_after([20] * 8) == 1
    assert wide_count() == counted + 2  # lstm_wide_calls_total
    idle.now = True


@pytest.mark.parametrize("lengths", [[20] * 8, [40, 37, 33, 36, 35, 40, 38, 39], [300] * 8 + [16] * 4, [20] * 33])
def test_the_wide_session_answers_as_the_workers_own(
    wide_engine: tuple[Engine, Idle], lengths: list[int], weather: np.ndarray, rng: np.random.Generator
) -> None:
    engine, idle = wide_engine
    seqs = windows(weather, lengths, rng)
    h0, c0 = (rng.standard_normal((2, len(seqs), 8)).astype(np.float32) * 0.5 for _ in range(2))
    batch = Batch([s.astype(np.float32) for s in seqs], h0, c0)
    idle.now, calls = True, engine.wide_calls
    on_all = engine.predict(batch)
    assert engine.wide_calls > calls
    idle.now = False
    own = engine.predict(batch)
    idle.now = True
    for a, b in zip(on_all, own, strict=True):
        np.testing.assert_allclose(a.outputs, b.outputs, atol=1e-5)
        np.testing.assert_allclose(a.hn, b.hn, atol=1e-6)
        np.testing.assert_allclose(a.cn, b.cn, atol=1e-6)


def test_no_wide_session_where_it_adds_no_threads_and_none_after_release(repo: Path) -> None:
    folder = repo / "tiny" / "1"
    assert Engine.load(folder, "cpu", intra_op_threads=2, wide=Wide(2, 64, Idle())).wide_session is None
    assert Engine.load(folder, "cpu", intra_op_threads=0, wide=Wide(4, 64, Idle())).wide_session is None  # all
    assert Engine.load(folder, "cpu", intra_op_threads=1).wide_session is None
    e = Engine.load(folder, "cpu", intra_op_threads=1, wide=Wide(2, 64, Idle()))
    assert e.wide_session is not None
    e.warmup()  # both sessions
    e.release()
    assert e.wide is None and e.wide_session is None
