"""int8 export: ONNX Runtime's dynamic quantization behind the held-out accuracy gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from service.model.batch import Batch
from service.model.contract import METADATA_FILE, MODEL_CARD_FILE, MODEL_FILE
from service.model.engine import Engine, Wide
from training import quantize
from training.__main__ import main
from training.export import ExportError, export, load_checkpoint, to_onnx

from .conftest import ROOT, windows


@pytest.fixture(scope="module")
def int8(tiny_run: Path, repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("int8")
    return export(tiny_run / "checkpoint.pt", root, "tiny", 2, quantize="int8")


def test_the_int8_version_holds_int8_lstm_weights(int8: Path) -> None:
    ops = {n.op_type for n in onnx.load(str(int8 / MODEL_FILE)).graph.node}
    assert {"DynamicQuantizeLSTM", "MatMulInteger"} <= ops and "LSTM" not in ops


def test_both_errors_are_recorded_in_the_metadata_and_the_model_card(int8: Path, tiny_run: Path) -> None:
    meta = json.loads((int8 / METADATA_FILE).read_text())
    q = meta["quantization"]
    assert meta["precision"] == "int8" and q["max_mae_growth"] == quantize.MAX_MAE_GROWTH
    before, after = q["held_out_mae"]["float32"], q["held_out_mae"]["int8"]
    # the float32 graph's held-out error is training's own test score (PyTorch), computed again by ONNX Runtime
    ckpt = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    assert before[0] == pytest.approx(ckpt["metrics"]["test"]["model"]["mae"], abs=1e-4)
    assert after[0] - before[0] <= quantize.MAX_MAE_GROWTH and after[0] != before[0]
    card = (int8 / MODEL_CARD_FILE).read_text()
    assert f"float32 {before[0]:.4f}" in card and f"int8 {after[0]:.4f}" in card and "weights in int8" in card


def test_the_service_serves_it_close_to_the_float_version(
    int8: Path, repo: Path, weather: np.ndarray, rng: np.random.Generator
) -> None:
    quantized, exact = Engine.load(int8, "cpu"), Engine.load(repo / "tiny" / "1", "cpu")
    xs = windows(weather, [40, 7, 120], rng)
    batch = Batch(xs, *exact.spec.zero_states(len(xs)))
    got, want = quantized.predict(batch), exact.predict(batch)
    diffs = np.concatenate([np.abs(g.outputs - w.outputs).ravel() for g, w in zip(got, want, strict=True)])
    assert 0 < diffs.mean() < quantize.MAX_MAE_GROWTH  # not the same graph, and not far from it


def test_the_int8_version_explains_its_gates_from_its_own_weights(
    int8: Path, repo: Path, weather: np.ndarray, rng: np.random.Generator
) -> None:
    """The explanation runs the LSTM equations on the int8 weights' values: its last states are ONNX Runtime's
    for the int8 graph up to the activations' rounding (which the reference does not model), and they are not
    the float32 version's."""
    quantized, exact = Engine.load(int8, "cpu"), Engine.load(repo / "tiny" / "1", "cpu")
    xs = windows(weather, [50], rng)
    batch = Batch(xs, *exact.spec.zero_states(1))
    (mine,), (ran,) = quantized.explain(batch), quantized.predict(batch)
    (theirs,) = exact.explain(batch)
    np.testing.assert_allclose(mine["hidden"][:, -1], ran.hn, atol=0.01)
    np.testing.assert_allclose(mine["cell"][:, -1], ran.cn, atol=0.02)
    assert not np.allclose(mine["cell"], theirs["cell"], atol=1e-4)


@pytest.mark.parametrize("written", [True, False], ids=["within", "beyond"])
def test_the_gate_refuses_a_graph_whose_error_grows_too_much(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: bool
) -> None:
    """Stand in for the quantizer with a graph whose forecasts are all moved by ``shift`` (target units). A move of
    0.02 changes the MAE by at most 0.02: written. A move of twice the MAE and one more grows it by over 1: not."""
    model, ckpt = load_checkpoint(tiny_run / "checkpoint.pt")
    mae = ckpt["metrics"]["test"]["model"]["mae"]
    shift = 0.02 if written else 2 * mae + 1
    with torch.no_grad():
        model.head.bias += shift / ckpt["stats"]["y_std"][0]
    monkeypatch.setattr("training.export.to_int8", lambda _: to_onnx(model))
    if written:
        folder = export(tiny_run / "checkpoint.pt", tmp_path, "tiny", 2, quantize="int8")
        q = json.loads((folder / METADATA_FILE).read_text())["quantization"]["held_out_mae"]
        assert q["int8"][0] != q["float32"][0] and abs(q["int8"][0] - q["float32"][0]) <= shift + 1e-5
    else:
        with pytest.raises(quantize.AccuracyGateError, match=r"more than 0\.05; nothing written"):
            export(tiny_run / "checkpoint.pt", tmp_path, "tiny", 2, quantize="int8")
        assert not (tmp_path / "tiny").exists()


def test_the_command_line(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["export", "--checkpoint", str(tiny_run / "checkpoint.pt"), "--repository", str(tmp_path)]
    assert main([*args, "--name", "m", "--version", "3", "--quantize", "int8"]) == 0
    assert "model_card.md" in capsys.readouterr().out
    assert json.loads((tmp_path / "m" / "3" / METADATA_FILE).read_text())["precision"] == "int8"
    with pytest.raises(SystemExit):
        main([*args, "--quantize", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_a_float_export_writes_its_card_too(repo: Path) -> None:
    meta = json.loads((repo / "tiny" / "1" / METADATA_FILE).read_text())
    assert meta["precision"] == "float32" and "quantization" not in meta
    card = (repo / "tiny" / "1" / MODEL_CARD_FILE).read_text()
    assert "weights in float32" in card and "## int8" not in card
    assert f"{meta['metrics']['test']['model']['mae']:.4f}" in card


def test_the_gate_refuses_data_that_is_not_what_training_scored(tiny_run: Path, tmp_path: Path) -> None:
    """Run from elsewhere, or with the CSV changed since training: the float32 error no longer matches training's
    test score, so the comparison would be of nothing; refused."""
    _, ckpt = load_checkpoint(tiny_run / "checkpoint.pt")
    float_bytes = to_onnx(load_checkpoint(tiny_run / "checkpoint.pt")[0])
    moved = tmp_path / "data.csv"
    rows = (ROOT / "data" / "seattle-weather.csv").read_text().splitlines()
    moved.write_text("\n".join(rows[:-30]) + "\n")  # the last 30 held-out rows gone
    ckpt["config"]["train"]["data"] = str(moved)
    with pytest.raises(quantize.AccuracyGateError, match="not the data it was trained on"):
        quantize.gate(float_bytes, float_bytes, ckpt)


def test_export_refuses_a_name_that_is_not_one_folder(tiny_run: Path, tmp_path: Path) -> None:
    for name in ("../escape", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(ExportError, match="not a model folder name"):
            export(tiny_run / "checkpoint.pt", tmp_path / "repo", name, 1)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "repo").exists()


def test_per_channel_int8_weights_explain_too(
    int8: Path, tiny_run: Path, tmp_path: Path, weather: np.ndarray, rng: np.random.Generator
) -> None:
    """Scales per gate row ([1, 4H]) as well as per tensor: the explanation's last states are ONNX Runtime's."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path / "pc" / "1"
    shutil.copytree(int8, folder)
    source = tmp_path / "float.onnx"
    source.write_bytes(to_onnx(load_checkpoint(tiny_run / "checkpoint.pt")[0]))
    quantize_dynamic(source, folder / MODEL_FILE, per_channel=True, weight_type=QuantType.QInt8)
    scales = [i for i in onnx.load(str(folder / MODEL_FILE)).graph.initializer if i.name.endswith("_scale")]
    assert any(list(s.dims) == [1, 32] for s in scales)  # per gate row: 4 gates x 8 units
    engine = Engine.load(folder, "cpu")
    batch = Batch(windows(weather, [40], rng), *engine.spec.zero_states(1))
    (mine,), (ran,) = engine.explain(batch), engine.predict(batch)
    np.testing.assert_allclose(mine["hidden"][:, -1], ran.hn, atol=0.01)
    np.testing.assert_allclose(mine["cell"][:, -1], ran.cn, atol=0.02)


def test_an_int8_version_keeps_to_its_workers_threads(int8: Path, repo: Path) -> None:
    """Its answers move with its thread count: no session on every core for it (ModelSpec.exact)."""
    wide = Wide(2, 64, lambda: True)
    quantized = Engine.load(int8, "cpu", intra_op_threads=1, wide=wide)
    assert not quantized.spec.exact and quantized.wide_session is None
    exact = Engine.load(repo / "tiny" / "1", "cpu", intra_op_threads=1, wide=wide)
    assert exact.spec.exact and exact.wide_session is not None
