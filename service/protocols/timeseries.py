"""KServe's time series forecast API: ``POST /v1/timeseries/forecast``.

``{"model", "inputs": [{"type", "name", "series", "frequency", "start_timestamp"?}], "options": {"horizon",
"quantiles"?}}`` in; ``{"id", "created_at", "status", "model", "outputs": [{"type": "time_series_forecast", "id",
"status", "content": [{"type", "name", "mean_forecast", "frequency", "start_timestamp", "quantiles", "targets"}]}]}``
out, one output per input, each forecast from its series' last step. A series holds the model's features at
each step: ``multivariate_time_series`` ``[step][feature]``, or ``univariate_time_series`` ``[step]`` for a model
of one feature. Extra fields (``metadata``, ``other_properties``) are allowed, as the API says, and ignored.

The body names the model, so it is read and parsed before the model's request path admits it; from there it
is a codec around ``DataPlane.serve`` as every protocol is. Errors: ``{"error": {"code", "message", "param",
"type"}}``, ``param`` the field at fault (``inputs.0.series.3.1``).
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
from anyio.to_thread import run_sync as run_in_threadpool
from starlette.types import Receive, Scope

from ..model.contract import ModelSpec
from ..pipeline import forecast, jsondata, rules
from ..pipeline.dataplane import INLINE_DECODE_BYTES, Call, Outcome
from ..pipeline.errors import InvalidInput, Loc, PayloadTooLarge, ServiceError, error, where
from ..pipeline.registry import Registry
from ..pipeline.rules import Limits
from ..server.http import JSON, read_body
from ..server.middleware import new_request_id

PATH = "/v1/timeseries/forecast"
PLACES = rules.Places(x=("inputs",), h0=("inputs",), c0=("inputs",))
UNIVARIATE, MULTIVARIATE = "univariate_time_series", "multivariate_time_series"
FIXED = {"S": timedelta(seconds=1), "T": timedelta(minutes=1), "H": timedelta(hours=1), "D": timedelta(days=1),
         "W": timedelta(weeks=1)}  # fmt: skip
MONTHS = {"M": 1, "Q": 3, "Y": 12}
FREQUENCIES = {
    **{k: k for k in (*FIXED, *MONTHS)},
    "SECOND": "S", "MINUTE": "T", "HOUR": "H", "DAY": "D", "WEEK": "W", "MONTH": "M", "QUARTER": "Q", "YEAR": "Y",
}  # fmt: skip
SERIES_FIELDS = ("type", "name", "series", "frequency", "start_timestamp")
NAME = re.compile(r".{1,256}", re.DOTALL)


@dataclass(frozen=True)
class Series:
    name: str
    frequency: str  # as the request spelt it
    forecast_start: str | None  # one period after the series' last step (None: the request gave no start)


@dataclass(frozen=True)
class Request:
    series: list[Series]
    asked: forecast.Ask


def _invalid(loc: Loc, msg: str, kind: str) -> InvalidInput:
    return InvalidInput([error(loc, msg, kind)])


def _timestamp(value: Any, loc: Loc) -> tuple[datetime | None, bool]:
    if value is None:
        return None, False
    if not isinstance(value, str) or len(value) > 64:
        raise _invalid(loc, "Input should be an ISO 8601 timestamp", "timestamp")
    written = value[:-1] + "Z" if value.endswith("z") else value  # RFC 3339 allows either
    try:
        return datetime.fromisoformat(written), written.endswith("Z")
    except ValueError:
        raise _invalid(loc, f"{value!r} is not an ISO 8601 timestamp", "timestamp") from None


def _values(series: Any, loc: Loc, kind: str, spec: ModelSpec, limits: Limits) -> np.ndarray:
    """The series as [steps, features] float32, each value a finite number, its steps within the limits."""
    if not isinstance(series, list):
        raise _invalid(loc, "Input should be a valid list", "list_type")
    step_dim = rules.sequence_dims(spec, limits)[1]
    if count := step_dim.count_error(len(series), loc):
        raise InvalidInput([count])
    if kind == UNIVARIATE:
        if spec.input_size != 1:
            msg = (
                f"Model {spec.name} reads {spec.input_size} values per step ({', '.join(spec.feature_names)}): send "
                f"a {MULTIVARIATE}"
            )
            raise _invalid((*loc[:-1], "type"), msg, "series_type")
        rows: list[Any] = [[v] for v in series]
    else:
        rows = series
    for t, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != spec.input_size:
            msg = f"Each step should hold {spec.input_size} values ({', '.join(spec.feature_names)})"
            raise _invalid((*loc, t), msg, "shape")
        for f, v in enumerate(row):
            if not isinstance(v, int | float) or isinstance(v, bool):
                place = (*loc, t) if kind == UNIVARIATE else (*loc, t, f)
                raise _invalid(place, "Input should be a valid number", "float_type")
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused by name just below
        values = np.asarray(rows, dtype=np.float64).astype(np.float32)
    if kind == UNIVARIATE:
        return rules.finite_float32(values[:, 0], loc)[:, None]  # its places: the series' own indexes
    return rules.finite_float32(values, loc)


class ForecastCodec:
    """One parsed forecast request (its model picked the request path)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def decode(self, body: bytes, spec: ModelSpec, limits: Limits) -> Call[Request]:
        doc = self.document
        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise _invalid(("inputs",), "Input should be a list of at least one time series", "list_type")
        if len(inputs) > limits.max_batch_size:
            msg = f"Should have at most {limits.max_batch_size} time series, not {len(inputs)}"
            raise InvalidInput([error(("inputs",), msg, "too_long", limit=limits.max_batch_size)])
        options = doc.get("options")
        if not isinstance(options, dict):
            raise _invalid(("options",), "Field required: an object with horizon, and quantiles", "missing")
        if "horizon" not in options:
            raise _invalid(("options", "horizon"), "Field required", "missing")
        asked = forecast.ask(spec, options["horizon"], options.get("quantiles"), ("options", "horizon"),
                             ("options", "quantiles"))  # fmt: skip
        series, x, names = [], [], set()
        for i, item in enumerate(inputs):
            loc = ("inputs", i)
            if not isinstance(item, dict):
                raise _invalid(loc, "Input should be an object", "model_attributes_type")
            for key in ("type", "name", "series", "frequency"):
                if key not in item:
                    raise _invalid((*loc, key), "Field required", "missing")
            kind, name, frequency = item["type"], item["name"], item["frequency"]
            if kind not in (UNIVARIATE, MULTIVARIATE):
                raise _invalid((*loc, "type"), f"Should be {UNIVARIATE} or {MULTIVARIATE}", "literal_error")
            if not isinstance(name, str) or not NAME.fullmatch(name):
                raise _invalid((*loc, "name"), "Should be a string of 1 to 256 characters", "string_type")
            if name in names:
                raise _invalid(
                    (*loc, "name"), f"Name {name!r} is given twice: each series' name is its own", "duplicate"
                )
            names.add(name)
            if not isinstance(frequency, str) or frequency.upper() not in FREQUENCIES:
                raise _invalid((*loc, "frequency"), f"Should be one of {', '.join(FREQUENCIES)}", "literal_error")
            values = _values(item["series"], (*loc, "series"), kind, spec, limits)
            start, utc_z = _timestamp(item.get("start_timestamp"), (*loc, "start_timestamp"))
            after = None if start is None else _after(start, utc_z, frequency, len(values), (*loc, "start_timestamp"))
            x.append(values)
            series.append(Series(name, frequency, after))
        batch = rules.batch(x, None, None, spec, limits, PLACES)
        return Call(batch, context=Request(series, asked))

    def encode(self, call: Call[Request], outcome: Outcome, spec: ModelSpec) -> bytes:
        assert call.context is not None
        request = call.context
        targets = spec.horizons.targets
        outputs = []
        for s, result in zip(request.series, outcome.results, strict=True):
            ahead = forecast.forecast(result, spec, request.asked)
            one = len(targets) == 1  # one target: a univariate forecast, a list of numbers
            content: dict[str, Any] = {
                "type": UNIVARIATE if one else MULTIVARIATE,
                "name": s.name,
                "mean_forecast": ahead.mean[:, 0] if one else ahead.mean,
                "frequency": s.frequency,
                "start_timestamp": s.forecast_start,
                "targets": targets,
            }
            if ahead.quantiles:  # none asked: none given, as the API has it
                content["quantiles"] = {q: v[:, 0] if one else v for q, v in ahead.quantiles.items()}
            status = {"id": f"ts_{new_request_id()}", "status": "completed"}
            outputs.append({"type": "time_series_forecast", **status, "content": [content]})
        answer = {
            "id": f"resp_{new_request_id()}",
            "created_at": int(time.time()),
            "status": "completed",
            "error": None,
            "model": spec.name,
            "model_version": spec.version,
            "outputs": outputs,
        }
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


def _after(start: datetime, utc_z: bool, frequency: str, steps: int, loc: Loc) -> str:
    """When the forecast starts: ``steps`` periods after the series' start (a 400 past the calendar's end)."""
    code = FREQUENCIES[frequency.upper()]
    try:
        if code in FIXED:
            when = start + FIXED[code] * steps
        else:
            month = start.month - 1 + MONTHS[code] * steps
            year, month = start.year + month // 12, month % 12 + 1
            when = start.replace(year=year, month=month, day=min(start.day, calendar.monthrange(year, month)[1]))
    except (OverflowError, ValueError):
        raise _invalid(loc, f"{steps} steps of {frequency} from it run past the year 9999", "timestamp") from None
    text = when.isoformat()
    return text.removesuffix("+00:00") + "Z" if utc_z else text


def _document(body: bytes) -> dict[str, Any]:
    doc = jsondata.document(body, ("body",))  # a key given twice is refused, as on every JSON protocol
    if not isinstance(doc, dict):
        raise _invalid(("body",), "Input should be a JSON object", "model_attributes_type")
    if not isinstance(doc.get("model"), str) or not doc["model"]:
        raise _invalid(("model",), "Field required: the name of a model this server serves", "missing")
    return doc


async def serve(registry: Registry, scope: Scope, receive: Receive) -> tuple[int, bytes, dict[str, str], bytes]:
    """Status, body, headers and content type of one forecast request. The body names the model: it is read and
    parsed before that model's request path takes it, admitted meanwhile as any request is (the worker's
    admission is one for every model), and a large one is parsed off the event loop."""
    try:
        plane = registry.default_plane
        plane.admission.enter()
        try:
            body = await read_body(scope, receive, plane.limits.max_body_bytes, plane.limits.body_timeout_s)
            if len(body) <= INLINE_DECODE_BYTES:
                doc = _document(body)
            else:
                doc = await run_in_threadpool(_document, body)
        finally:
            plane.admission.leave()  # no await before the model's path enters it again
        plane = registry.get(doc["model"], None)

        async def parsed() -> bytes:
            return b""  # the codec holds the document

        answer: bytes = await plane.serve(ForecastCodec(doc), parsed, size=len(body))
    except ServiceError as exc:
        status, detail, headers = error_response(exc)
        return status, detail, headers, JSON
    return 200, answer, {}, JSON


def error_response(exc: ServiceError) -> tuple[int, bytes, dict[str, str]]:
    """The API's error shape: 400 for invalid input, naming the field at fault; the pipeline's status else."""
    if isinstance(exc, InvalidInput):
        first: dict[str, Any] = exc.errors[0] if exc.errors else {"loc": ["body"], "type": "invalid"}
        body = {"code": first["type"], "message": exc.lines(), "param": where(first["loc"]),
                "type": "invalid_request_error"}  # fmt: skip
        return 400, orjson.dumps({"error": body}), {}
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    code = "too_large" if isinstance(exc, PayloadTooLarge) else _snake(type(exc).__name__)
    body = {"code": code, "message": str(exc), "param": None, "type": kind}
    return exc.status, orjson.dumps({"error": body}), dict(exc.headers)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
