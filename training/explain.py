"""Draw an exported model's gates and cell state over a stretch of a CSV: ``python -m training explain``.

The states are those the service's explanations return (``service.explain``, the
numpy reference on the ONNX file's weights), streamed from the CSV's first row so
that the plotted stretch starts from a warmed-up memory, as in serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from service.model.contract import METADATA_FILE, MODEL_FILE
from service.model.explain import Explainer

from .data import load_csv


def explain_csv(model_dir: Path, data: str | Path) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
    """The model's metadata, the CSV's feature rows and the explanation of all of them, streamed from row 0."""
    meta = json.loads((model_dir / METADATA_FILE).read_text())
    targets = (meta.get("horizons") or {}).get("targets", meta["target_names"])  # columns, not "temp_max+3"
    series = load_csv(data, meta["feature_names"], targets)
    explainer = Explainer.from_onnx((model_dir / MODEL_FILE).read_bytes())
    zeros = np.zeros((len(explainer.layers), explainer.hidden_size), dtype=np.float32)
    return meta, series.features, explainer.explain(series.features, zeros, zeros)


def summarise(features: np.ndarray, names: list[str], ex: dict[str, np.ndarray], layer: int) -> dict[str, Any]:
    """Figures that say what the gates do: memory length per unit and what opens the input gate."""
    forget = ex["forget"][layer]  # [T, H]
    mean_forget = forget.mean(axis=0)
    write = ex["input"][layer].mean(axis=1)  # how much new information the layer writes per step
    change = np.abs(np.diff(features, axis=0, prepend=features[:1]))
    return {
        "layer": layer,
        "units": int(forget.shape[1]),
        "mean_forget": float(mean_forget.mean()),
        "units_forget_over_0.9": int((mean_forget > 0.9).sum()),
        "units_forget_under_0.5": int((mean_forget < 0.5).sum()),
        # a forget gate f keeps a memory for about 1 / (1 - f) steps
        "memory_steps_median": float(np.median(1.0 / (1.0 - mean_forget))),
        "memory_steps_max": float((1.0 / (1.0 - mean_forget)).max()),
        "input_gate_corr_with_abs_change": {
            n: float(np.corrcoef(write, change[:, k])[0, 1]) for k, n in enumerate(names)
        },
    }


def plot(
    model_dir: Path, data: str | Path, out: Path, start: int | None = None, steps: int = 365, layer: int = -1
) -> dict[str, Any]:
    """Write the PNG; returns the summary figures of the plotted layer over the whole series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta, features, ex = explain_csv(model_dir, data)
    layers = ex["forget"].shape[0]
    layer = layer % layers
    first = max(0, len(features) - steps) if start is None else start
    rows = np.arange(first, min(first + steps, len(features)))
    names: list[str] = meta["feature_names"]
    order = np.argsort(ex["forget"][layer].mean(axis=0))[::-1]  # longest memories on top

    bound = float(np.abs(ex["cell"][layer][rows]).max()) or 1.0
    panels: list[tuple[str, str, str, tuple[float, float]]] = [
        ("forget", "forget gate f(t)", "viridis", (0.0, 1.0)),
        ("input", "input gate i(t)", "viridis", (0.0, 1.0)),
        ("output", "output gate o(t)", "viridis", (0.0, 1.0)),
        ("cell", "cell state c(t)", "RdBu_r", (-bound, bound)),
    ]
    fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(11, 12), sharex=True, height_ratios=[1.3, 1, 1, 1, 1])
    ax = axes[0]
    for k, name in enumerate(names):
        col = features[rows, k]
        ax.plot(rows, (col - col.mean()) / (col.std() or 1.0), label=name, linewidth=0.9)
    ax.set(ylabel="inputs, standardised", title=f"{meta['name']} v{meta['version']}: layer {layer + 1} of {layers}")
    ax.legend(loc="upper right", ncol=len(names), fontsize=8)
    for ax, (key, label, cmap, limits) in zip(axes[1:], panels, strict=True):
        values = ex[key][layer][rows][:, order].T  # [unit, step]
        im = ax.imshow(
            values,
            aspect="auto",
            cmap=cmap,
            vmin=limits[0],
            vmax=limits[1],
            extent=(rows[0] - 0.5, rows[-1] + 0.5, values.shape[0] - 0.5, -0.5),
            interpolation="nearest",
        )
        ax.set(ylabel=f"{label}\nunit (by memory)")
        fig.colorbar(im, ax=ax, pad=0.01)
    axes[-1].set(xlabel="row of the CSV")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return summarise(features, names, ex, layer)
