"""Train the forecaster on a CSV: seeded, split by time, early stopping, plots.

The task is next-step forecasting: the output at step t predicts the targets at
step t+1. Validation and test are scored the way the service is used: the model
streams over the whole series from the first row, states carried, and only the
steps inside the segment are scored, against the persistence forecast (the last
observed value).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import horizons as hz
from .data import Series, Split, ahead, load_csv, sample_windows, split_by_time, train_stats
from .model import LSTMForecaster, ModelConfig


@dataclass
class TrainConfig:
    data: str = "data/seattle-weather.csv"  # CSV whose rows are in time order
    features: list[str] = field(default_factory=lambda: ["precipitation", "temp_max", "temp_min", "wind"])
    targets: list[str] = field(default_factory=lambda: ["temp_max"])  # forecast one step ahead
    horizons: int = 1  # K: steps ahead forecast at each row, and scored
    head: str = "direct"  # "direct": the head writes all K horizons; "rollout": targets = features, fed back
    out: str = "artifacts/seattle-weather"  # checkpoint.pt, metrics.json, loss.png, forecast.png
    hidden_size: int = 64  # H
    num_layers: int = 2  # L
    dropout: float = 0.1  # between stacked layers
    window: int = 64  # steps per training window
    batch_size: int = 32  # windows per optimiser step
    windows_per_epoch: int = 512  # random windows drawn from the training rows each epoch
    lr: float = 3e-3  # AdamW learning rate
    weight_decay: float = 1e-4
    max_epochs: int = 150
    patience: int = 20  # epochs without a better validation loss before stopping
    val_frac: float = 0.15  # rows after the training rows, for early stopping
    test_frac: float = 0.15  # last rows, held out and scored once at the end
    seed: int = 0
    plots: bool = True  # write loss.png and forecast.png


def stream_predict(model: LSTMForecaster, series: Series) -> np.ndarray:
    """Predictions over the whole series in one streamed pass: row t predicts the targets of row t+1."""
    x = torch.from_numpy(series.features[None, :-1])
    h0, c0 = model.zero_state(1)
    with torch.no_grad():
        y, _, _ = model(x, h0, c0, torch.tensor([x.shape[1]]))
    return np.asarray(y[0].numpy())


def score(series: Series, pred: np.ndarray, start: int, end: int) -> dict[str, dict[str, float]]:
    """MAE and RMSE per target on target rows [start, end), for the model and for persistence."""
    rows = np.arange(max(start, 1), end)
    actual = series.targets[rows]
    out: dict[str, dict[str, float]] = {}
    for name, forecast in (("model", pred[rows - 1]), ("persistence", series.targets[rows - 1])):
        err = forecast - actual
        out[name] = {
            "mae": float(np.abs(err).mean()),
            "rmse": float(np.sqrt((err**2).mean())),
        }
    return out


HEADS = ("direct", "rollout")


def horizon_scores(
    model: LSTMForecaster,
    series: Series,
    split: Split,
    pred: np.ndarray,
    cfg: TrainConfig,
    mcfg: ModelConfig,
    stats: dict[str, list[float]],
    epochs: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per horizon, the model's scores against persistence and seasonal persistence on the validation and test
    rows; cross-conformal quantiles of calibration residuals, and their coverage of the test rows.

    The calibration residuals are cross-fit (``horizons.FOLDS`` blocks of the training and validation rows, each
    forecast by a model trained as this one, for as many epochs, on the rest): every season of every year
    before the test rows, where the validation rows alone are one part of one year. The first ``window`` rows
    are left out: their forecasts come from states that have read little yet, unlike the test rows'."""
    n, k = len(series.features), cfg.horizons

    def forecasts_of(m: LSTMForecaster, p: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
        if cfg.head == "direct":
            return np.arange(n - 1), hz.by_horizon(p, k)
        origins = np.arange(max(first - k, 0), n - 1)
        return origins, hz.rollout(m, series, origins, k)

    origins, forecasts = forecasts_of(model, pred, split.train_end)
    calibration: list[list[np.ndarray]] = []
    edges = np.linspace(0, split.val_end, hz.FOLDS + 1).astype(int)
    for fold, (a, b) in enumerate(itertools.pairwise(edges.tolist())):
        rng = np.random.default_rng(cfg.seed + 1 + fold)
        other, _, _ = fit(cfg, mcfg, stats, series, split, rng, held_out=(a, b), epochs=epochs)
        o, f = forecasts_of(other, stream_predict(other, series), a)
        calibration.append(hz.residuals(series, f, o, max(a, cfg.window), b))  # past the states' warm-up
    pooled = [np.concatenate([fold[h] for fold in calibration]) for h in range(k)]
    levels, quantiles = hz.conformal(pooled)
    scores = {
        "head": cfg.head,
        "steps": k,
        "val": hz.score(series, forecasts, origins, split.train_end, split.val_end),
        "test": hz.score(series, forecasts, origins, split.val_end, n),
        "calibration_rows": [len(r) for r in pooled],
        "coverage": hz.coverage(hz.residuals(series, forecasts, origins, split.val_end, n), quantiles, levels),
    }
    return scores, {"levels": levels, "quantiles": quantiles.tolist()}


def normalised_mse(model: LSTMForecaster, pred: np.ndarray, actual: np.ndarray) -> float:
    return float((((pred - actual) / model.y_std.numpy()) ** 2).mean())


def fit(
    cfg: TrainConfig,
    mcfg: ModelConfig,
    stats: dict[str, list[float]],
    series: Series,
    split: Split,
    rng: np.random.Generator,
    held_out: tuple[int, int] | None = None,
    epochs: int | None = None,
) -> tuple[LSTMForecaster, dict[str, list[float]], int]:
    """A model trained on windows of the training rows, the epoch chosen by its validation loss (streamed over
    the validation rows, ``patience`` epochs without a better one end it); its loss history and that epoch.
    ``held_out`` and ``epochs``: trained on the training and validation rows but that block, for ``epochs``
    epochs (a cross-fit for calibration: nothing chooses its epoch)."""
    written = mcfg.n_outputs // len(cfg.targets)
    model = LSTMForecaster(mcfg)
    model.set_stats(stats)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, cfg.windows_per_epoch // cfg.batch_size)
    end = split.train_end if held_out is None else split.val_end
    history: dict[str, list[float]] = {"train": [], "val": []}
    best = (math.inf, 0, copy.deepcopy(model.state_dict()))
    bar = tqdm(range(1, (epochs or cfg.max_epochs) + 1), desc="train", unit="epoch", disable=held_out is not None)
    for epoch in bar:
        model.train()
        total = 0.0
        for _ in range(steps_per_epoch):
            xb, yb = sample_windows(series, end, cfg.window, cfg.batch_size, rng, written, held_out)
            x, y = torch.from_numpy(xb), torch.from_numpy(yb)
            h0, c0 = model.zero_state(len(x))
            pred, _, _ = model(x, h0, c0, torch.full((len(x),), x.shape[1]))
            loss = ((model.normalise_target(pred) - model.normalise_target(y)) ** 2).mean()
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item()
        history["train"].append(total / steps_per_epoch)
        if held_out is not None:
            continue
        model.eval()
        pred = stream_predict(model, series)
        origins = np.arange(split.train_end - 1, split.val_end - written)  # every forecast row in validation
        val = normalised_mse(model, pred[origins], ahead(series.targets, origins, written))
        history["val"].append(val)
        bar.set_postfix(train=f"{history['train'][-1]:.4f}", val=f"{val:.4f}")
        if val < best[0]:
            best = (val, epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= cfg.patience:
            break
    bar.close()
    if held_out is None:
        model.load_state_dict(best[2])
    model.eval()
    return model, history, best[1] if held_out is None else len(history["train"])


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, write the checkpoint, metrics and plots to cfg.out, and return the metrics."""
    if cfg.head not in HEADS:
        raise ValueError(f"head: {cfg.head!r} is not one of {', '.join(HEADS)}")
    if cfg.horizons < 1:
        raise ValueError("horizons: at least 1")
    if len(set(cfg.targets)) != len(cfg.targets) or len(set(cfg.features)) != len(cfg.features):
        raise ValueError("features and targets: each name once")
    if cfg.head == "rollout" and cfg.targets != cfg.features:
        raise ValueError("head rollout feeds its forecasts back as inputs: its targets must be its features")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    series = load_csv(cfg.data, cfg.features, cfg.targets)
    n = len(series.features)
    split = split_by_time(n, cfg.val_frac, cfg.test_frac)
    if cfg.horizons >= min(split.val_end - split.train_end, n - split.val_end):
        msg = f"horizons: {cfg.horizons} do not fit the {split.val_end - split.train_end} validation rows"
        raise ValueError(f"{msg} and {n - split.val_end} test rows: fewer steps ahead, or more data")
    stats = train_stats(series, split)
    written = cfg.horizons if cfg.head == "direct" else 1  # horizons the head writes at each row
    stats["y_mean"], stats["y_std"] = stats["y_mean"] * written, stats["y_std"] * written
    mcfg = ModelConfig(
        n_features=len(cfg.features),
        n_outputs=len(cfg.targets) * written,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        dropout=cfg.dropout,
    )
    model, history, best_epoch = fit(cfg, mcfg, stats, series, split, rng)
    pred = stream_predict(model, series)
    one_step = pred[:, : len(cfg.targets)]  # horizon 1 of a direct head
    metrics: dict[str, Any] = {
        "best_epoch": best_epoch,
        "epochs_run": len(history["val"]),
        "rows": {"train": split.train_end, "val": split.val_end - split.train_end, "test": n - split.val_end},
        "val": score(series, one_step, split.train_end, split.val_end),
        "test": score(series, one_step, split.val_end, n),
    }
    intervals = None
    if cfg.horizons > 1 or cfg.head == "rollout":
        metrics["horizons"], intervals = horizon_scores(model, series, split, pred, cfg, mcfg, stats, best_epoch)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "config": {"model": asdict(mcfg), "train": asdict(cfg)},
            "stats": stats,
            "metrics": metrics,
            "intervals": intervals,
        },
        out / "checkpoint.pt",
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if cfg.plots:
        plot(out, history, series, pred, split, best_epoch)
    return metrics


def plot(out: Path, history: dict[str, list[float]], series: Series, pred: np.ndarray, split: Split, best: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = np.arange(1, len(history["train"]) + 1)
    ax.plot(epochs, history["train"], label="train (windows)")
    ax.plot(epochs, history["val"], label="validation (streamed)")
    ax.axvline(best, color="grey", linestyle=":", label=f"best epoch {best}")
    ax.set(xlabel="epoch", ylabel="MSE, normalised target", yscale="log", title="Loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)

    rows = np.arange(split.val_end, len(series.targets))[-200:]
    fig, ax = plt.subplots(figsize=(10, 4))
    name = series.target_names[0]
    ax.plot(rows, series.targets[rows, 0], label="actual", color="black", linewidth=1.2)
    ax.plot(rows, pred[rows - 1, 0], label="LSTM, one step ahead", linewidth=1.2)
    ax.plot(rows, series.targets[rows - 1, 0], label="persistence", linewidth=0.8, alpha=0.7)
    ax.set(xlabel="row (held-out test rows)", ylabel=name, title=f"Next-step forecast of {name}, held-out rows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "forecast.png", dpi=110)
    plt.close(fig)
