"""What a model forecasts ahead, from its metadata: how many steps, of which targets, and its intervals.

A head of several horizons writes, at each step, output ``(k - 1) * targets + j`` for target j at step t + k
(``training.export``). Its intervals are conformal: per horizon and target, quantiles of the residuals
(actual minus forecast) at ``levels``; a forecast's quantile q is the forecast plus the residuals' quantile q,
interpolated between the stored levels. A one-step model without intervals forecasts one step, and no quantile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Horizons:
    steps: int  # how far ahead the head forecasts
    targets: list[str]  # what it forecasts, each step
    levels: np.ndarray  # [levels] ascending in (0, 1); empty: no intervals
    residuals: np.ndarray  # [steps, levels, targets] residual quantiles at ``levels``

    @classmethod
    def read(cls, meta: dict[str, Any], output_size: int, target_names: list[str]) -> Horizons:
        """The model's horizons and intervals, checked (``ValueError`` says what is wrong)."""
        given = meta.get("horizons")
        steps: Any = 1
        targets: Any = list(target_names)
        if given is not None:
            if not isinstance(given, dict):
                raise ValueError("horizons must be an object: steps and targets")
            steps, targets = given.get("steps"), given.get("targets")
            if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
                raise ValueError("horizons.steps must be a positive integer")
            if not (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)):
                raise ValueError("horizons.targets must be a list of names")
            if steps * len(targets) != output_size:
                raise ValueError(f"horizons: {steps} steps of {len(targets)} targets is not the {output_size} outputs")
        intervals = meta.get("intervals")
        if intervals is None:
            return cls(steps, targets, np.zeros(0), np.zeros((steps, 0, len(targets))))
        try:
            levels = np.asarray(intervals["levels"], dtype=np.float64)
            residuals = np.asarray(intervals["quantiles"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise ValueError("intervals must hold levels and quantiles, lists of numbers") from None
        if (
            levels.ndim != 1
            or not len(levels)
            or not ((levels > 0) & (levels < 1)).all()
            or (np.diff(levels) <= 0).any()
        ):
            raise ValueError("intervals.levels must ascend strictly within (0, 1)")
        if residuals.shape != (steps, len(levels), len(targets)) or not np.isfinite(residuals).all():
            shape = [steps, len(levels), len(targets)]
            raise ValueError(f"intervals.quantiles must be finite numbers of shape {shape} (horizons, levels, targets)")
        if (np.diff(residuals, axis=1) < 0).any():
            raise ValueError("intervals.quantiles must not decrease from one level to the next")
        return cls(steps, targets, levels, residuals)

    @property
    def quantile_range(self) -> tuple[float, float] | None:
        """The lowest and highest quantile the intervals reach, or None without intervals."""
        return (float(self.levels[0]), float(self.levels[-1])) if len(self.levels) else None

    def mean(self, last: np.ndarray, horizon: int) -> np.ndarray:
        """The forecast of the next ``horizon`` steps from the outputs of one step: [horizon, targets]."""
        return last.reshape(self.steps, len(self.targets))[:horizon]

    def quantile(self, mean: np.ndarray, q: float) -> np.ndarray:
        """Quantile ``q`` of each forecast in ``mean`` ([horizon, targets]; q within ``quantile_range``)."""
        horizon = len(mean)
        shift = np.empty_like(mean, dtype=np.float64)
        for k in range(horizon):
            for j in range(mean.shape[1]):
                shift[k, j] = np.interp(q, self.levels, self.residuals[k, :, j])
        return (mean + shift).astype(np.float32)


def quantile_key(q: float) -> str:
    """A quantile as the forecast API keys it: ``"0.1"``, ``"0.975"``."""
    return repr(float(q))
