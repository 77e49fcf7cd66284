"""ONNX Runtime against PyTorch (minGPT-style parity), and what export writes or refuses to write."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training import export as export_mod
from training.export import ExportError, export, load_checkpoint

from .conftest import windows


@pytest.fixture(scope="module")
def torch_and_ort(tiny_run: Path, repo: Path) -> tuple[torch.nn.Module, ort.InferenceSession]:
    model, _ = load_checkpoint(tiny_run / "checkpoint.pt")
    return model, ort.InferenceSession(str(repo / "tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "lengths",
    [[1], [2], [64], [500], [5, 5, 5], [7, 1, 30, 12], [1, 200, 3, 3, 199, 50, 1, 8], [33] * 16],
    ids=lambda v: f"B{len(v)}-T{max(v)}{'-padded' if len(set(v)) > 1 else ''}",
)
@pytest.mark.parametrize("states", ["zero", "random"])
def test_onnx_runtime_matches_pytorch(
    torch_and_ort: tuple, weather: np.ndarray, lengths: list[int], states: str, rng: np.random.Generator
) -> None:
    model, sess = torch_and_ort
    b, t = len(lengths), max(lengths)
    x = np.zeros((b, t, 4), dtype=np.float32)
    for i, w in enumerate(windows(weather, lengths, rng)):
        x[i, : len(w)] = w
    scale = 0.0 if states == "zero" else 0.8
    h0 = (rng.standard_normal((2, b, 8)) * scale).astype(np.float32)
    c0 = (rng.standard_normal((2, b, 8)) * scale).astype(np.float32)
    lens = np.array(lengths, dtype=np.int32)
    with torch.no_grad():
        ref = [a.numpy() for a in model(*(torch.from_numpy(a) for a in (x, h0, c0, lens)))]
    got = sess.run(["y", "hn", "cn"], {"x": x, "h0": h0, "c0": c0, "lengths": lens})
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(got[0][i, :n], ref[0][i, :n], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[1], ref[1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[2], ref[2], rtol=0, atol=1e-5)


def test_final_states_of_a_padded_sequence_come_from_its_own_last_step(
    torch_and_ort: tuple, weather: np.ndarray
) -> None:
    """The same sequence, alone and padded to 50 steps in a batch, ends in the same state."""
    _, sess = torch_and_ort
    seq = weather[100:110]
    zeros = np.zeros((2, 1, 8), dtype=np.float32)
    alone = sess.run(None, {"x": seq[None], "h0": zeros, "c0": zeros, "lengths": np.array([10], dtype=np.int32)})
    x = np.zeros((2, 50, 4), dtype=np.float32)
    x[0, :10], x[0, 10:] = seq, 99.0  # garbage past the end must not leak in
    x[1] = weather[200:250]
    z2 = np.zeros((2, 2, 8), dtype=np.float32)
    both = sess.run(None, {"x": x, "h0": z2, "c0": z2, "lengths": np.array([10, 50], dtype=np.int32)})
    np.testing.assert_allclose(both[1][:, 0], alone[1][:, 0], atol=1e-6)
    np.testing.assert_allclose(both[2][:, 0], alone[2][:, 0], atol=1e-6)
    np.testing.assert_allclose(both[0][0, :10], alone[0][0], atol=1e-6)


def test_graph_has_native_lstm_nodes_and_dynamic_axes(repo: Path) -> None:
    m = onnx.load(repo / "tiny" / "1" / "model.onnx")
    lstm = [n for n in m.graph.node if n.op_type == "LSTM"]
    assert len(lstm) == 2  # one per layer
    assert all(n.input[4] for n in lstm), "sequence_lens must be wired into every LSTM node"
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    assert dims == {"x": ["batch", "seq", 4], "h0": [2, "batch", 8], "c0": [2, "batch", 8], "lengths": ["batch"]}
    assert m.opset_import[0].version == export_mod.OPSET


def test_metadata_describes_the_model(repo: Path) -> None:
    meta = json.loads((repo / "tiny" / "1" / "metadata.json").read_text())
    assert meta["name"] == "tiny" and meta["version"] == "1"
    assert (meta["input_size"], meta["output_size"], meta["hidden_size"], meta["num_layers"]) == (4, 1, 8, 2)
    assert meta["feature_names"] == ["precipitation", "temp_max", "temp_min", "wind"]
    assert meta["target_names"] == ["temp_max"]
    assert 0 <= meta["parity_max_abs_diff"] <= 1e-5
    assert "persistence" in meta["metrics"]["test"]


def test_export_refuses_to_write_a_model_that_disagrees(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = export_mod.parity
    monkeypatch.setattr(export_mod, "parity", lambda model, onnx_bytes: real(model, onnx_bytes) + 2e-5)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export(tiny_run / "checkpoint.pt", tmp_path, "bad", 1)
    assert not (tmp_path / "bad" / "1" / "model.onnx").exists()


def test_parity_check_detects_a_broken_graph(tiny_run: Path) -> None:
    """The check itself must see a real difference: a graph whose head bias is shifted by 1e-4."""
    model, _ = load_checkpoint(tiny_run / "checkpoint.pt")
    onnx_bytes = export_mod.to_onnx(model)
    assert export_mod.parity(model, onnx_bytes) <= 1e-5
    with torch.no_grad():
        model.head.bias += 1e-4
    assert export_mod.parity(model, onnx_bytes) > 1e-5


def test_triton_config_matches_the_onnx_graph(repo: Path) -> None:
    """config.pbtxt parses into Triton's own ModelConfig message and describes the ONNX file's tensors."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config = text_format.Parse((repo / "tiny" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.name == "tiny" and config.backend == "onnxruntime" and config.max_batch_size == 0
    graph = onnx.load(repo / "tiny" / "1" / "model.onnx").graph
    onnx_types = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.INT32: mc.TYPE_INT32}

    def described(values: object) -> dict:
        return {
            v.name: (
                onnx_types[v.type.tensor_type.elem_type],
                [d.dim_value or -1 for d in v.type.tensor_type.shape.dim],
            )
            for v in values  # type: ignore[attr-defined]
        }

    assert {t.name: (t.data_type, list(t.dims)) for t in config.input} == described(graph.input)
    assert {t.name: (t.data_type, list(t.dims)) for t in config.output} == described(graph.output)
