"""Time-series CSV loading, the split by time, statistics and training windows."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Series:
    features: np.ndarray  # [N, F] float32, raw units
    targets: np.ndarray  # [N, O] float32, raw units
    feature_names: list[str]
    target_names: list[str]


@dataclass
class Split:
    train_end: int  # rows [0, train_end) train the model and give its statistics
    val_end: int  # rows [train_end, val_end) choose the epoch; [val_end, N) are held out


def load_csv(path: str | Path, features: list[str], targets: list[str]) -> Series:
    """Read the named numeric columns of a CSV whose rows are in time order."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in features + targets if c not in header]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(header)})")
        rows = list(reader)
    if len(rows) < 20:
        raise ValueError(f"{path}: {len(rows)} rows is too few to split into train, validation and test")

    def column(name: str) -> np.ndarray:
        try:
            return np.array([float(r[name]) for r in rows], dtype=np.float32)
        except ValueError as e:
            raise ValueError(f"{path}: column {name!r} is not numeric: {e}") from None

    x = np.stack([column(c) for c in features], axis=1)
    y = np.stack([column(c) for c in targets], axis=1)
    for name, arr in (("feature", x), ("target", y)):
        bad = np.argwhere(~np.isfinite(arr))
        if len(bad):
            raise ValueError(f"{path}: {name} value at data row {bad[0][0] + 1} is not a finite number")
    return Series(x, y, list(features), list(targets))


def split_by_time(n: int, val_frac: float, test_frac: float) -> Split:
    """Chronological split: the model never trains on anything after what it is judged on."""
    val_end = n - max(2, round(n * test_frac))
    train_end = val_end - max(2, round(n * val_frac))
    if train_end < 8:
        raise ValueError(f"{n} rows leave only {train_end} for training")
    return Split(train_end, val_end)


def train_stats(series: Series, split: Split) -> dict[str, list[float]]:
    """Mean and std of the training rows only (no leakage from later rows)."""

    def std(a: np.ndarray) -> list[float]:
        s = a.std(axis=0)
        return [float(v) for v in np.where(s > 1e-8, s, 1.0)]

    x, y = series.features[: split.train_end], series.targets[: split.train_end]
    return {
        "x_mean": [float(v) for v in x.mean(axis=0)],
        "x_std": std(x),
        "y_mean": [float(v) for v in y.mean(axis=0)],
        "y_std": std(y),
    }


def sample_windows(
    series: Series,
    end: int,
    window: int,
    count: int,
    rng: np.random.Generator,
    horizons: int = 1,
    exclude: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`count` random windows inside rows [0, end): inputs [count, W, F], and the targets of the next
    ``horizons`` steps, horizon-major [count, W, horizons * O]. ``exclude``: rows [a, b) that no window reads
    or targets (a block held out)."""
    w = min(window, end - horizons)
    last = end - w - horizons + 1  # the last target of a window starting before it, row start+w+horizons-1, < end
    if exclude is None:
        starts = rng.integers(0, last, size=count)
    else:
        allowed = np.arange(last)
        allowed = allowed[(allowed + w + horizons <= exclude[0]) | (allowed >= exclude[1])]
        starts = rng.choice(allowed, size=count)
    idx = starts[:, None] + np.arange(w)[None, :]
    return series.features[idx], ahead(series.targets, idx, horizons)


def ahead(targets: np.ndarray, rows: np.ndarray, horizons: int) -> np.ndarray:
    """The targets of rows r+1 .. r+horizons for each row r, horizon-major: [*rows.shape, horizons * targets]."""
    return np.concatenate([targets[rows + k] for k in range(1, horizons + 1)], axis=-1)
