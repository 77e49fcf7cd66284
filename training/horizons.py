"""Forecasts several steps ahead, scored per horizon, and their calibrated intervals.

Two ways to forecast ``horizons`` steps ahead from the states at a row:

- ``direct``: the head writes every horizon at once; output ``(k - 1) * targets + j`` at row t forecasts
  target j at row t + k (one model call, whatever the horizon);
- ``rollout``: a one-step model whose targets are its features; its forecast of row t + 1 is fed back as
  row t + 1's input, k times (k calls; every feature must be forecast, or known ahead).

Both are scored on the same rows against persistence (the value at the origin) and seasonal persistence (the
value one season before the forecast row). Intervals are conformal: residuals per horizon and target give
quantiles that the serving side adds to a forecast. ``training.train`` takes them cross-fit (each row before the
test rows forecast by a model trained as the shipped one without it: cross-conformal, close to CV+); the test
rows, never seen in training or calibration, measure how often the intervals hold the actual value.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .data import Series
from .model import LSTMForecaster

SEASON = 365  # rows of daily data in a year: seasonal persistence looks this far back
LEVELS = [round(0.005 * k, 3) for k in range(1, 200)]  # the quantiles stored: 0.005 .. 0.995
INTERVALS = (0.8, 0.95)  # the central intervals whose held-out coverage is measured
FOLDS = 4  # blocks of the rows before the test rows, each forecast by a model trained on the others


def by_horizon(pred: np.ndarray, horizons: int) -> np.ndarray:
    """[rows, horizons * targets] -> [rows, horizons, targets]."""
    return pred.reshape(len(pred), horizons, -1)


def states_along(model: LSTMForecaster, series: Series, end: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The streamed pass over rows [0, end): each row's one-step output, and the states after each row
    ([end, layers, hidden] each)."""
    h, c = model.zero_state(1)
    outputs, hs, cs = [], [], []
    x = torch.from_numpy(series.features[:end])
    with torch.no_grad():
        for t in range(end):
            y, h, c = model(x[None, t : t + 1], h, c, torch.tensor([1]))
            outputs.append(y[0, 0].numpy())
            hs.append(h[:, 0])
            cs.append(c[:, 0])
    return np.stack(outputs), torch.stack(hs), torch.stack(cs)


def rollout(model: LSTMForecaster, series: Series, origins: np.ndarray, horizons: int) -> np.ndarray:
    """A one-step model's forecasts of its own features, fed back: [len(origins), horizons, features], each
    origin's row read, then ``horizons`` steps of its own forecasts."""
    first, hs, cs = states_along(model, series, int(origins.max()) + 1)
    h, c = hs[origins].transpose(0, 1).contiguous(), cs[origins].transpose(0, 1).contiguous()
    step = torch.from_numpy(first[origins])  # the forecast of row origin + 1
    out = [step.numpy()]
    ones = torch.ones(len(origins), dtype=torch.int64)
    with torch.no_grad():
        for _ in range(horizons - 1):
            y, h, c = model(step[:, None, :], h, c, ones)
            step = y[:, 0]
            out.append(step.numpy())
    return np.stack(out, axis=1)


def _errors(forecast: np.ndarray, actual: np.ndarray) -> dict[str, list[float]]:
    """MAE and RMSE per target."""
    err = forecast - actual
    return {"mae": np.abs(err).mean(axis=0).tolist(), "rmse": np.sqrt((err**2).mean(axis=0)).tolist()}


def score(series: Series, forecasts: np.ndarray, origins: np.ndarray, start: int, end: int) -> list[dict[str, Any]]:
    """Per horizon k, over the forecast rows r in [start, end) whose origin r - k is in ``origins``: MAE and
    RMSE per target of the model, persistence and seasonal persistence (``forecasts``: [origins, horizons,
    targets])."""
    at = {int(o): i for i, o in enumerate(origins)}
    out = []
    for k in range(1, forecasts.shape[1] + 1):
        rows = np.array([r for r in range(start, end) if r - k in at and r >= SEASON], dtype=np.int64)
        actual = series.targets[rows]
        model = forecasts[[at[int(r) - k] for r in rows], k - 1]
        out.append(
            {
                "horizon": k,
                "rows": len(rows),
                "model": _errors(model, actual),
                "persistence": _errors(series.targets[rows - k], actual),
                "seasonal": _errors(series.targets[rows - SEASON], actual),
            }
        )
    return out


def residuals(series: Series, forecasts: np.ndarray, origins: np.ndarray, start: int, end: int) -> list[np.ndarray]:
    """Per horizon k, actual minus forecast over the rows r in [start, end) with origin r - k: [rows, targets]."""
    at = {int(o): i for i, o in enumerate(origins)}
    out = []
    for k in range(1, forecasts.shape[1] + 1):
        rows = np.array([r for r in range(start, end) if r - k in at], dtype=np.int64)
        out.append(series.targets[rows] - forecasts[[at[int(r) - k] for r in rows], k - 1])
    return out


def _rank(p: float, n: int) -> int:
    return math.ceil((n + 1) * p) if p > 0.5 else math.floor((n + 1) * p)


def conformal(calibration: list[np.ndarray], levels: list[float] = LEVELS) -> tuple[list[float], np.ndarray]:
    """Conformal quantiles of the residuals: the levels ``n`` residuals can give, and [horizons, levels,
    targets]. Level p's value is the ceil((n + 1) p)-th smallest residual for p above one half and the
    floor((n + 1) p)-th below it, so that the interval between levels p and 1 - p holds a new residual with
    probability at least 1 - 2p when residuals are exchangeable; a level whose rank falls outside 1..n (too
    few residuals for it) is left out, never clamped to the extreme."""
    n = min(len(res) for res in calibration)
    kept = [p for p in levels if 1 <= _rank(p, n) <= n]
    out = []
    for res in calibration:
        ordered = np.sort(res, axis=0)
        out.append(np.stack([ordered[_rank(p, len(ordered)) - 1] for p in kept]))
    return kept, np.stack(out)


def coverage(
    held_out: list[np.ndarray], quantiles: np.ndarray, levels: list[float] = LEVELS
) -> dict[str, list[list[float]]]:
    """Per central interval (``INTERVALS``), horizon and target, the share of held-out residuals inside it."""
    out: dict[str, list[list[float]]] = {}
    for width in INTERVALS:
        low, high = levels.index(round((1 - width) / 2, 3)), levels.index(round((1 + width) / 2, 3))
        out[f"{width:g}"] = [
            ((res >= q[low]) & (res <= q[high])).mean(axis=0).tolist()
            for res, q in zip(held_out, quantiles, strict=True)
        ]
    return out
