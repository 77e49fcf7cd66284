"""Export a checkpoint to ONNX, check ONNX Runtime against PyTorch, write the model repository entry.

Layout (Triton's model repository): ``<repository>/<name>/config.pbtxt`` and
``<repository>/<name>/<version>/model.onnx``, with ``metadata.json`` beside the
ONNX file holding what this service needs to know.
Nothing is written unless ONNX Runtime matches PyTorch within ``MAX_ABS_DIFF``
on every checked shape, padded batches of unequal lengths included.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from service.model.contract import CONFIG_FILE, INPUTS, METADATA_FILE, MODEL_CARD_FILE, MODEL_FILE, OUTPUTS, tensors

from .horizons import FOLDS, INTERVALS, SEASON
from .model import LSTMForecaster, ModelConfig
from .quantize import CHOICES, gate, to_int8

OPSET = 17
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # one folder of the repository, as Triton names models
MAX_ABS_DIFF = 1e-5
# (batch, steps, lengths or None for all full): single steps, long streams, padded mixed batches
PARITY_CASES: list[tuple[int, int, list[int] | None]] = [
    (1, 1, None),
    (1, 64, None),
    (3, 17, None),
    (5, 40, [40, 1, 13, 40, 27]),
    (8, 300, [300, 299, 150, 2, 77, 1, 300, 64]),
]


class ExportError(RuntimeError):
    pass


def load_checkpoint(path: str | Path) -> tuple[LSTMForecaster, dict[str, Any]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = LSTMForecaster(ModelConfig(**ckpt["config"]["model"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt


def to_onnx(model: LSTMForecaster) -> bytes:
    cfg = model.cfg
    x = torch.zeros(2, 3, cfg.n_features)
    h0, c0 = model.zero_state(2)
    lengths = torch.tensor([3, 2], dtype=torch.int32)
    graph = tensors(cfg.n_features, cfg.n_outputs, cfg.hidden_size, cfg.num_layers)
    names = {"batch": "batch", "steps": "seq"}  # the exported graph's symbolic dimensions
    dynamic_axes = {
        t.name: {i: names[t.meaning.split(", ")[i]] for i, d in enumerate(t.dims) if d == -1} for t in graph.values()
    }
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # Known and handled: variable-length LSTMs need h0/c0 as inputs (they are, parity() checks it);
        # the legacy exporter is chosen on purpose; the traced `total_length < max(lengths)` guard is
        # constant because lengths never exceed the sequence axis.
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        torch.onnx.export(
            model,
            (x, h0, c0, lengths),
            f"{tmp}/{MODEL_FILE}",
            dynamo=False,  # the dynamo exporter freezes dimensions; this one gives native LSTM nodes
            opset_version=OPSET,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes=dynamic_axes,
        )
        return Path(f"{tmp}/{MODEL_FILE}").read_bytes()


def parity(model: LSTMForecaster, onnx_bytes: bytes, seed: int = 0) -> float:
    """Max abs difference between ONNX Runtime and PyTorch over PARITY_CASES (valid steps only): outputs in the
    head's normalised units (divided by the targets' standard deviation, so that float32 rounding weighs the
    same whatever the targets' units), states as they are."""
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    mean, std = model.x_mean.numpy(), model.x_std.numpy()
    y_std = model.y_std.numpy()
    rng = np.random.default_rng(seed)
    cfg = model.cfg
    worst = 0.0
    for i, (b, t, lens) in enumerate(PARITY_CASES):
        x = (rng.standard_normal((b, t, cfg.n_features)) * std + mean).astype(np.float32)
        state_shape = (cfg.num_layers, b, cfg.hidden_size)
        scale = 0.0 if i % 2 == 0 else 0.5  # zero and non-zero initial states
        h0 = (rng.standard_normal(state_shape) * scale).astype(np.float32)
        c0 = (rng.standard_normal(state_shape) * scale).astype(np.float32)
        lengths = np.array(lens or [t] * b, dtype=np.int32)
        with torch.no_grad():
            ref = model(*(torch.from_numpy(a) for a in (x, h0, c0, lengths)))
        got = sess.run(list(OUTPUTS), dict(zip(INPUTS, (x, h0, c0, lengths), strict=True)))
        valid = np.arange(t)[None, :] < lengths[:, None]
        worst = max(
            worst,
            float(np.abs((got[0] - ref[0].numpy()) / y_std)[valid].max()),
            float(np.abs(got[1] - ref[1].numpy()).max()),
            float(np.abs(got[2] - ref[2].numpy()).max()),
        )
    return worst


def horizon_names(targets: list[str], steps: int) -> list[str]:
    """The outputs of a head of ``steps`` horizons, horizon-major: ``temp_max+1``, ..., ``temp_max+7``."""
    return targets if steps == 1 else [f"{t}+{k}" for k in range(1, steps + 1) for t in targets]


def metadata(model: LSTMForecaster, ckpt: dict[str, Any], name: str, version: int, diff: float) -> dict[str, Any]:
    cfg = model.cfg
    train_cfg = ckpt["config"]["train"]
    steps = cfg.n_outputs // len(train_cfg["targets"])
    task = "next-step forecast: the output at step t predicts the targets at step t+1"
    if steps > 1:
        task = (
            f"forecast {steps} steps ahead: output (k-1)*{len(train_cfg['targets'])}+j at step t predicts "
            "target j at step t+k"
        )
    extra: dict[str, Any] = {}
    if steps > 1 or ckpt.get("intervals"):
        extra["horizons"] = {"steps": steps, "targets": train_cfg["targets"]}
    if ckpt.get("intervals"):
        extra["intervals"] = {
            "method": f"cross-conformal: residuals of {FOLDS} fold models trained as this one, on the rows before "
            "the test rows",
            **ckpt["intervals"],
        }
    return {
        "name": name,
        "version": str(version),
        "task": task,
        "input_size": cfg.n_features,
        "output_size": cfg.n_outputs,
        "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_layers,
        "feature_names": train_cfg["features"],
        "target_names": horizon_names(train_cfg["targets"], steps),
        **extra,
        "inputs": list(INPUTS),
        "outputs": list(OUTPUTS),
        "feature_means": ckpt["stats"]["x_mean"],  # of the training rows: typical raw inputs
        "opset": OPSET,
        "parity_max_abs_diff": diff,
        "training": {"data": train_cfg["data"], "seed": train_cfg["seed"]},
        "metrics": ckpt.get("metrics", {}),
    }


def triton_config(model: LSTMForecaster, name: str, previous: Path | None = None) -> str:
    """``config.pbtxt`` for Triton's onnxruntime backend: the same files serve on Triton or KServe.

    The states are [layers, batch, hidden], batch second, so Triton's own batching (which
    needs batch first on every tensor) stays off: max_batch_size 0 and -1 for dynamic axes.
    One configuration describes every version of the model: a dimension in which this version differs from
    ``previous`` (the configuration the other versions were written with) becomes -1.
    """
    cfg = model.cfg
    graph = tensors(cfg.n_features, cfg.n_outputs, cfg.hidden_size, cfg.num_layers)
    before = _dims_of(previous) if previous is not None and previous.is_file() else {}
    entries = {"input": [graph[n] for n in INPUTS], "output": [graph[n] for n in OUTPUTS]}
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', "max_batch_size: 0", "version_policy: { all: {} }"]
    for kind, specs in entries.items():
        lines.append(f"{kind} [")
        body = []
        for t in specs:
            dims = list(t.dims)
            old = before.get(t.name)
            if old is not None and len(old) == len(dims):
                dims = [d if d == o else -1 for d, o in zip(dims, old, strict=True)]
            body.append(
                f'  {{ name: "{t.name}", data_type: TYPE_{t.datatype}, dims: [ {", ".join(map(str, dims))} ] }}'
            )
        lines.append(",\n".join(body))
        lines.append("]")
    return "\n".join(lines) + "\n"


def _dims_of(path: Path) -> dict[str, list[int]]:
    """Each tensor's dims in a ``config.pbtxt`` (none if it does not parse)."""
    from service.model import repository
    from service.model.errors import ModelLoadError

    try:
        parsed = repository.config(path)
    except (ModelLoadError, OSError):
        return {}
    return {t.name: list(t.dims) for t in [*parsed.input, *parsed.output]}


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; servers often run as another user
    os.replace(tmp, path)


def horizon_card(h: dict[str, Any], targets: list[str], rows: int) -> list[str]:
    """Per horizon and target: the held-out errors against persistence and seasonal persistence, and how often
    the intervals held the actual value."""
    lines = [
        "## Horizons and intervals",
        "",
        f"Held-out test rows ({rows}); seasonal persistence forecasts the value {SEASON} rows before. The "
        f"intervals are cross-conformal: quantiles of {h['calibration_rows'][0]} residuals per horizon, each row "
        f"before the test rows forecast by one of {FOLDS} models trained as this one without it; coverage is the "
        "share of test rows inside each central interval.",
        "",
        "| target | horizon | model MAE | persistence MAE | seasonal MAE | "
        + " | ".join(f"{100 * w:g}% covers" for w in INTERVALS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(INTERVALS),
    ]
    for k, s in enumerate(h["test"]):
        for j, name in enumerate(targets):
            covers = " | ".join(f"{100 * h['coverage'][f'{w:g}'][k][j]:.1f}%" for w in INTERVALS)
            lines.append(
                f"| {name} | {s['horizon']} | {s['model']['mae'][j]:.3f} | {s['persistence']['mae'][j]:.3f} | "
                f"{s['seasonal']['mae'][j]:.3f} | {covers} |"
            )
    return lines


def model_card(meta: dict[str, Any]) -> str:
    """The version's model card (Markdown), from its metadata: what it does, on what data, how well."""
    m = meta["metrics"]
    source = " it was quantized from" if meta.get("quantization") else ""
    lines = [
        f"# {meta['name']}, version {meta['version']}",
        "",
        f"- Task: {meta['task']}.",
        f"- Inputs per step: {', '.join(meta['feature_names'])}; outputs per step: {', '.join(meta['target_names'])}.",
        f"- LSTM: {meta['num_layers']} layers of {meta['hidden_size']} units; weights in {meta['precision']}.",
        f"- Trained on `{meta['training']['data']}` (seed {meta['training']['seed']}), split by time.",
        f"- ONNX opset {meta['opset']}; the float32 graph{source} matches PyTorch within "
        f"{meta['parity_max_abs_diff']:.2g} (outputs in normalised units, states as they are).",
    ]
    if m:
        lines += [
            "",
            "Scores of the float32 model in training:",
            "",
            "| rows | model MAE | model RMSE | persistence MAE | persistence RMSE |",
            "|---|---|---|---|---|",
        ]
        for part in ("val", "test"):
            s = m[part]
            lines.append(
                f"| {part} ({m['rows'][part]}) | {s['model']['mae']:.4f} | {s['model']['rmse']:.4f} | "
                f"{s['persistence']['mae']:.4f} | {s['persistence']['rmse']:.4f} |"
            )
        lines += ["", "Persistence forecasts the last observed value; errors are in the targets' units."]
        if "horizons" in m:
            lines += ["", *horizon_card(m["horizons"], meta["horizons"]["targets"], m["rows"]["test"])]
    q = meta.get("quantization")
    if q:
        before, after = q["held_out_mae"]["float32"], q["held_out_mae"]["int8"]
        lines += [
            "",
            "## int8",
            "",
            f"{q['method']}. Held-out MAE over {q['held_out_rows']} rows, per target: float32 "
            f"{', '.join(f'{v:.4f}' for v in before)}; int8 {', '.join(f'{v:.4f}' for v in after)} "
            f"(written only if it grows by at most {q['max_mae_growth']:g}).",
        ]
    return "\n".join(lines) + "\n"


def export(
    checkpoint: str | Path, repository: str | Path, name: str, version: int = 1, quantize: str | None = None
) -> Path:
    """Write <repository>/<name>/<version>/{model.onnx,metadata.json,model_card.md}; returns that folder.
    ``quantize="int8"``: the int8 graph (``training.quantize``), if it passes the accuracy gate."""
    if quantize is not None and quantize not in CHOICES:
        raise ExportError(f"quantize: {quantize!r} is not a choice ({', '.join(CHOICES)})")
    if not NAME.fullmatch(name):
        raise ExportError(f"name: {name!r} is not a model folder name (letters, digits, '.', '_', '-')")
    model, ckpt = load_checkpoint(checkpoint)
    if ckpt["config"]["train"].get("head", "direct") != "direct":
        raise ExportError("a rollout head is measured, not served: serving feeds no forecast back; nothing written")
    onnx_bytes = to_onnx(model)
    diff = parity(model, onnx_bytes)
    if not diff <= MAX_ABS_DIFF:
        raise ExportError(f"ONNX Runtime differs from PyTorch by {diff:.3g} > {MAX_ABS_DIFF:g}; nothing written")
    meta = metadata(model, ckpt, name, version, diff)
    meta["precision"] = quantize or "float32"
    if quantize == "int8":
        int8 = to_int8(onnx_bytes)
        meta["quantization"] = gate(onnx_bytes, int8, ckpt)  # raises: nothing written
        onnx_bytes = int8
    folder = Path(repository) / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / MODEL_FILE, onnx_bytes)
    _write_atomic(folder / METADATA_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    _write_atomic(folder / MODEL_CARD_FILE, model_card(meta).encode())
    config = folder.parent / CONFIG_FILE
    _write_atomic(config, triton_config(model, name, config).encode())
    return folder
