"""int8 versions of an exported model: ONNX Runtime's dynamic quantization, behind an accuracy gate.

The weights of the LSTM and of the head are stored as int8 (``DynamicQuantizeLSTM``, ``MatMulInteger``); the
activations are quantized on the fly, per call. Nothing is written unless the held-out error (the test rows,
scored as training scores them: streamed over the whole series, states carried) grows by at most
``MAX_MAE_GROWTH`` in each target's own units.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from service.model.contract import INPUTS, OUTPUTS

from .data import Series, load_csv, split_by_time

MAX_MAE_GROWTH = 0.05  # in the target's units
CHOICES = ("int8",)  # what ``export --quantize`` takes
METHOD = "onnxruntime dynamic quantization: int8 weights (LSTM, MatMul), activations quantized per call"
QUANTIZED_OPS = ["LSTM", "MatMul", "Gemm"]


class AccuracyGateError(RuntimeError):
    pass


def to_int8(onnx_bytes: bytes) -> bytes:
    """The same graph with its LSTM and head weights as int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(onnx_bytes)
        quiet = logging.getLogger()  # the quantizer logs a generic pre-processing hint at WARNING on the root
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS)
        finally:
            quiet.setLevel(level)
        graph = target.read_bytes()
    ops = {node.op_type for node in onnx.load_from_string(graph).graph.node}
    if "DynamicQuantizeLSTM" not in ops or "LSTM" in ops:
        raise AccuracyGateError("the quantizer left the LSTM in float32; nothing written")
    return graph


def held_out(train_cfg: dict[str, Any]) -> tuple[Series, int]:
    """The checkpoint's own data and the first row of its held-out (test) rows."""
    series = load_csv(train_cfg["data"], train_cfg["features"], train_cfg["targets"])
    split = split_by_time(len(series.targets), train_cfg["val_frac"], train_cfg["test_frac"])
    return series, split.val_end


def held_out_mae(onnx_bytes: bytes, series: Series, start: int) -> list[float]:
    """MAE per target on the held-out rows, the graph run by ONNX Runtime over the whole series in one stream
    (as ``training.train.score`` scores: the output of row t-1 against the targets of row t)."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    shape = {i.name: i.shape for i in session.get_inputs()}["h0"]
    x = series.features[None, :-1].astype(np.float32)
    zeros = np.zeros((shape[0], 1, shape[2]), dtype=np.float32)
    feeds = dict(zip(INPUTS, (x, zeros, zeros, np.array([x.shape[1]], dtype=np.int32)), strict=True))
    y = session.run([OUTPUTS[0]], feeds)[0][0][:, : series.targets.shape[1]]  # a head of several horizons: the first
    rows = np.arange(start, len(series.targets))
    return [float(v) for v in np.abs(y[rows - 1] - series.targets[rows]).mean(axis=0)]


def gate(float_bytes: bytes, int8_bytes: bytes, ckpt: dict[str, Any]) -> dict[str, Any]:
    """Both held-out errors, or AccuracyGateError if int8 makes any target's grow by more than MAX_MAE_GROWTH (or
    if the data read now is not what training scored: its float32 error must be training's test error)."""
    series, start = held_out(ckpt["config"]["train"])
    before, after = held_out_mae(float_bytes, series, start), held_out_mae(int8_bytes, series, start)
    trained = ckpt.get("metrics", {}).get("test", {}).get("model", {}).get("mae")
    if trained is not None and abs(float(np.mean(before)) - trained) > 1e-3:  # training pools the targets
        raise AccuracyGateError(
            f"the held-out data read from {ckpt['config']['train']['data']} gives float32 an MAE of "
            f"{float(np.mean(before)):.4f}, but training scored {trained:.4f}: not the data it was trained on "
            "(run from the folder training ran in); nothing written"
        )
    growth = max(a - b for a, b in zip(after, before, strict=True))
    record = {
        "method": METHOD,
        "held_out_rows": len(series.targets) - start,
        "held_out_mae": {"float32": before, "int8": after},
        "max_mae_growth": MAX_MAE_GROWTH,
    }
    if not growth <= MAX_MAE_GROWTH:
        raise AccuracyGateError(
            f"int8 makes the held-out MAE grow by {growth:.4g} (float32 {before}, int8 {after}), more than "
            f"{MAX_MAE_GROWTH:g}; nothing written"
        )
    return record
