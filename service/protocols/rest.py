"""The ``/predict`` codec: JSON ``{"inputs", "h0", "c0", "explain", "sequence", "forecast"}`` in, ``{"outputs", "hn",
"cn", "model"}`` out. ``sequence`` (``{"id", "start", "end", "chunk"}``) names a server-held sequence: the server keeps
its states between chunks, for a client that cannot carry them. ``forecast`` (``{"horizon", "quantiles"}``) adds each
sequence's forecast ahead of its last step, with its quantiles (``pipeline.forecast``).

Errors in FastAPI's shape: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`` with 422
for invalid input and 413 for a body over the limit; ``{"detail": "..."}`` for the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from ..model.contract import ModelSpec
from ..pipeline import forecast, jsondata, rules, sequences
from ..pipeline.dataplane import Call, Outcome
from ..pipeline.errors import InvalidInput, PayloadTooLarge, ServiceError, error
from ..pipeline.rules import Dim, Limits

FIELDS = ("inputs", "h0", "c0", "explain", "sequence", "forecast")
PLACES = rules.Places(x=("body", "inputs"), h0=("body", "h0"), c0=("body", "c0"), explain=("body", "explain"))


class RestCodec:
    def decode(self, body: bytes, spec: ModelSpec, limits: Limits) -> Call[forecast.Ask]:
        """Parse and validate a /predict body against the model and the limits."""
        return jsondata.decode(body, lambda reader: self._read(reader, spec, limits))

    def _read(self, reader: jsondata.Reader, spec: ModelSpec, limits: Limits) -> Call[forecast.Ask]:
        doc = reader.document
        if not jsondata.is_object(doc):
            raise InvalidInput([error(("body",), "Input should be a JSON object", "model_attributes_type")])
        keys = jsondata.keys(doc, ("body",))
        extra = [k for k in keys if k not in FIELDS][: rules.MAX_ERRORS]
        errors = [
            error(("body", jsondata.key_name(k)), "Extra inputs are not permitted", "extra_forbidden") for k in extra
        ]
        if "inputs" not in keys:
            errors.append(error(("body", "inputs"), "Field required", "missing"))
        explain = doc["explain"] if "explain" in keys else False
        if not isinstance(explain, bool):
            errors.append(error(("body", "explain"), "Input should be a valid boolean", "bool_type"))
        if errors:
            raise InvalidInput(errors)
        x = reader.sequences(doc["inputs"], PLACES.x, rules.sequence_dims(spec, limits))
        state_dims = [Dim("sequence", len(x), len(x)), *rules.state_dims(spec)]  # one per sequence of inputs
        states: dict[str, np.ndarray | None] = {}
        for name, loc in (("h0", PLACES.h0), ("c0", PLACES.c0)):
            value = doc[name] if name in keys else None
            try:
                array = None if value is None else reader.array(value, loc, state_dims)
                states[name] = None if array is None else np.ascontiguousarray(array.transpose(1, 0, 2))  # [L, B, H]
            except InvalidInput as e:
                errors.extend(e.errors)
        if errors:
            raise InvalidInput(errors)
        batch = rules.batch(x, states["h0"], states["c0"], spec, limits, PLACES, explain)
        ref = None
        if "sequence" in keys and doc["sequence"] is not None:
            ref = sequences.read_ref(reader, doc["sequence"], ("body", "sequence"))
        if ref is not None:
            rules.sequence_batch(batch, ref, states["h0"] is not None, PLACES)
        asked = None
        if "forecast" in keys and doc["forecast"] is not None:
            asked = forecast.option(reader.plain(doc["forecast"]), spec, ("body", "forecast"))
        fits = None if asked is None else asked.fits
        return Call(batch, explain, PLACES.explain, context=asked, sequence=ref, fits=fits)

    def encode(self, call: Call[forecast.Ask], outcome: Outcome, spec: ModelSpec) -> bytes:
        results = outcome.results
        answer: dict[str, Any] = {
            "outputs": [r.outputs for r in results],
            "hn": [r.hn for r in results],
            "cn": [r.cn for r in results],
            "model": {"name": spec.name, "version": spec.version},
        }
        if outcome.explanations is not None:
            answer["explanation"] = outcome.explanations
        if call.context is not None:
            answer["forecast"] = [forecast.answer(r, spec, call.context) for r in results]
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


CODEC = RestCodec()


def error_response(exc: ServiceError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, FastAPI-shaped body and headers: the REST protocol's one mapping of the pipeline's errors."""
    if isinstance(exc, InvalidInput):
        return exc.status, {"detail": exc.errors}, {}
    if isinstance(exc, PayloadTooLarge):
        return exc.status, {"detail": [error(("body",), str(exc), "too_large", limit=exc.limit)]}, {}
    return exc.status, {"detail": str(exc)}, dict(exc.headers)
