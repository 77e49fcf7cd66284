"""Forecasts ahead, for every protocol that asks for them: what may be asked of a model, and the answer.

A request asks for ``horizon`` steps ahead of each sequence's last step, and optionally ``quantiles``; the
answer is each sequence's forecast (``Horizons.mean``) and its quantile forecasts (``Horizons.quantile``),
from the outputs of its last step. The rules and their wording live here once; each protocol says where in
its request the horizon and the quantiles are (``loc``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..model.batch import SequenceResult
from ..model.contract import ModelSpec
from ..model.horizons import quantile_key
from .errors import InvalidInput, Loc, error

MAX_QUANTILES = 32  # quantiles one request may ask for
OPTION_FIELDS = ("horizon", "quantiles")


@dataclass(frozen=True)
class Ask:
    horizon: int  # steps ahead of each sequence's last step
    quantiles: tuple[float, ...] = ()
    loc: Loc = ("forecast",)  # where the request asked, for an error about it

    def fits(self, spec: ModelSpec) -> None:
        """That ``spec`` can give this forecast (read against another version of its model: a server-held
        sequence's chunk runs on the version the sequence started on)."""
        h, reach = spec.horizons, spec.horizons.quantile_range
        quantiles_fit = not self.quantiles or (
            reach is not None and reach[0] <= min(self.quantiles) and max(self.quantiles) <= reach[1]
        )
        if self.horizon > h.steps or not quantiles_fit:
            msg = f"Version {spec.version} of model {spec.name}, which this sequence runs on, cannot give this forecast"
            raise InvalidInput([error(self.loc, msg, "horizon")])


@dataclass(frozen=True)
class Forecast:
    mean: np.ndarray  # [horizon, targets]
    quantiles: dict[str, np.ndarray]  # quantile key ("0.1") -> [horizon, targets]


def ask(spec: ModelSpec, horizon: Any, quantiles: Any, horizon_loc: Loc, quantiles_loc: Loc) -> Ask:
    """A request's horizon and quantiles, checked against what the model forecasts."""
    h = spec.horizons
    if not isinstance(horizon, int) or isinstance(horizon, bool):
        raise InvalidInput([error(horizon_loc, "Input should be a valid integer", "int_type")])
    if not 1 <= horizon <= h.steps:
        steps = f"{h.steps} step{'s' if h.steps > 1 else ''}"
        msg = f"Should be 1 to {h.steps}: model {spec.name} version {spec.version} forecasts {steps} ahead"
        raise InvalidInput([error(horizon_loc, msg, "horizon", limit=h.steps)])
    if quantiles is None:
        return Ask(horizon)
    if not isinstance(quantiles, list):
        raise InvalidInput([error(quantiles_loc, "Input should be a valid list", "list_type")])
    if len(quantiles) > MAX_QUANTILES:
        msg = f"Should have at most {MAX_QUANTILES} quantiles, not {len(quantiles)}"
        raise InvalidInput([error(quantiles_loc, msg, "too_long", limit=MAX_QUANTILES)])
    reach = h.quantile_range
    if quantiles and reach is None:
        msg = f"Model {spec.name} version {spec.version} has no intervals: ask for its forecast alone"
        raise InvalidInput([error(quantiles_loc, msg, "no_intervals")])
    asked: list[float] = []
    for i, q in enumerate(quantiles):
        if not isinstance(q, int | float) or isinstance(q, bool):
            raise InvalidInput([error((*quantiles_loc, i), "Input should be a valid number", "float_type")])
        assert reach is not None
        if not reach[0] <= q <= reach[1]:
            msg = f"Should be within {reach[0]:g} to {reach[1]:g}, the quantiles this model's intervals reach"
            raise InvalidInput([error((*quantiles_loc, i), msg, "quantile")])
        if float(q) in asked:
            raise InvalidInput([error((*quantiles_loc, i), f"Quantile {q:g} is asked for twice", "duplicate")])
        asked.append(float(q))
    return Ask(horizon, tuple(asked))


def option(value: Any, spec: ModelSpec, loc: Loc) -> Ask:
    """A request's ``forecast`` option, ``{"horizon", "quantiles"}`` (``/predict``, the WebSocket stream)."""
    if not isinstance(value, dict):
        raise InvalidInput([error(loc, "Input should be an object: horizon, and quantiles", "model_attributes_type")])
    extra = [k for k in value if k not in OPTION_FIELDS]
    if extra:
        raise InvalidInput([error((*loc, extra[0][:64]), "Extra inputs are not permitted", "extra_forbidden")])
    if "horizon" not in value:
        raise InvalidInput([error((*loc, "horizon"), "Field required", "missing")])
    asked = ask(spec, value["horizon"], value.get("quantiles"), (*loc, "horizon"), (*loc, "quantiles"))
    return replace(asked, loc=loc)


def answer(result: SequenceResult, spec: ModelSpec, asked: Ask) -> dict[str, Any]:
    """One sequence's forecast as the JSON protocols answer it: ``{"mean", "quantiles"}``."""
    ahead = forecast(result, spec, asked)
    return {"mean": ahead.mean, "quantiles": ahead.quantiles}


def forecast(result: SequenceResult, spec: ModelSpec, asked: Ask) -> Forecast:
    """One sequence's forecast from the outputs of its last step, by ``spec``: the version that ran it (one that
    ``fits`` the ask: ``DataPlane`` checks another version before a sequence's chunk runs there)."""
    h = spec.horizons
    mean = h.mean(np.asarray(result.outputs[-1], dtype=np.float32), asked.horizon)
    return Forecast(mean, {quantile_key(q): h.quantile(mean, q) for q in asked.quantiles})
