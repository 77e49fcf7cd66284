"""The ``/predict`` codec: JSON ``{"inputs", "h0", "c0", "explain", "sequence"}`` in, ``{"outputs", "hn", "cn",
"model"}`` out. ``sequence`` (``{"id", "start", "end"}``) names a server-held sequence: the server keeps its
states between chunks, for a client that cannot carry them.

Errors in FastAPI's shape: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`` with 422
for invalid input and 413 for a body over the limit; ``{"detail": "..."}`` for the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from ..model.contract import ModelSpec
from ..pipeline import jsondata, rules
from ..pipeline.dataplane import Call, Outcome
from ..pipeline.errors import InvalidInput, PayloadTooLarge, ServiceError, error
from ..pipeline.rules import Dim, Limits
from ..pipeline.sequences import SequenceRef, sequence_id

FIELDS = ("inputs", "h0", "c0", "explain", "sequence")
SEQUENCE_FIELDS = ("id", "start", "end")
PLACES = rules.Places(x=("body", "inputs"), h0=("body", "h0"), c0=("body", "c0"), explain=("body", "explain"))


def _sequence(reader: jsondata.Reader, value: Any) -> SequenceRef:
    """``{"id": ..., "start": false, "end": false}``: the server-held sequence this chunk continues."""
    loc = ("body", "sequence")
    if not jsondata.is_object(value):
        raise InvalidInput([error(loc, "Input should be an object: id, start, end", "model_attributes_type")])
    names = jsondata.keys(value, loc)
    plain = {k: reader.plain(value[k]) for k in names}
    errors = [
        error((*loc, jsondata.key_name(k)), "Extra inputs are not permitted", "extra_forbidden")
        for k in names
        if k not in SEQUENCE_FIELDS
    ]
    if "id" not in plain:
        errors.append(error((*loc, "id"), "Field required", "missing"))
    for flag in ("start", "end"):
        if not isinstance(plain.get(flag, False), bool):
            errors.append(error((*loc, flag), "Input should be a valid boolean", "bool_type"))
    if errors:
        raise InvalidInput(errors)
    ident = sequence_id(plain["id"], (*loc, "id"))
    return SequenceRef(ident, plain.get("start", False), plain.get("end", False), (*loc, "id"))


class RestCodec:
    def decode(self, body: bytes, spec: ModelSpec, limits: Limits) -> Call[None]:
        """Parse and validate a /predict body against the model and the limits."""
        return jsondata.decode(body, lambda reader: self._read(reader, spec, limits))

    def _read(self, reader: jsondata.Reader, spec: ModelSpec, limits: Limits) -> Call[None]:
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
        ref = _sequence(reader, doc["sequence"]) if "sequence" in keys and doc["sequence"] is not None else None
        if ref is not None:
            rules.sequence_batch(batch, ref, states["h0"] is not None, PLACES)
        return Call(batch, explain, PLACES.explain, sequence=ref)

    def encode(self, call: Call[None], outcome: Outcome, spec: ModelSpec) -> bytes:
        results = outcome.results
        answer: dict[str, Any] = {
            "outputs": [r.outputs for r in results],
            "hn": [r.hn for r in results],
            "cn": [r.cn for r in results],
            "model": {"name": spec.name, "version": spec.version},
        }
        if outcome.explanations is not None:
            answer["explanation"] = outcome.explanations
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


CODEC = RestCodec()


def error_response(exc: ServiceError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, FastAPI-shaped body and headers: the REST protocol's one mapping of the pipeline's errors."""
    if isinstance(exc, InvalidInput):
        return exc.status, {"detail": exc.errors}, {}
    if isinstance(exc, PayloadTooLarge):
        return exc.status, {"detail": [error(("body",), str(exc), "too_large", limit=exc.limit)]}, {}
    return exc.status, {"detail": str(exc)}, dict(exc.headers)
