"""The Open Inference Protocol (the "V2" protocol of KServe, Triton and MLServer), REST flavour:
request and response bodies, JSON tensor data and the binary tensor data extension.

Inputs are the graph's own: ``x`` [batch, steps, features], optional ``h0`` and ``c0``
[layers, batch, hidden] (both or neither; zeros when absent) and optional ``lengths`` [batch]
(each sequence's steps; all of ``steps`` when absent). Outputs: ``y`` [batch, steps, outputs],
zero past each sequence's length, and ``hn``, ``cn`` [layers, batch, hidden] after each
sequence's own last step. Knows nothing of HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from .engine import INPUTS, OUTPUTS, Batch, ModelSpec, SequenceResult
from .errors import ProtocolError
from .payload import Limits

HEADER_LENGTH = "inference-header-content-length"
DATATYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
}
FLOAT_TYPES, INT_TYPES = ("FP32", "FP64"), ("INT32", "INT64")


@dataclass
class InferRequest:
    id: str | None
    tensors: dict[str, np.ndarray]
    outputs: list[str]  # which outputs to return, in order
    binary: set[str] = field(default_factory=set)  # which of them as binary data


def _header(body: bytes, header_length: int | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        header, rest = body, b""
    else:
        if not 0 < header_length <= len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length {header_length} is outside the body ({len(body)} bytes)"
            )
        header, rest = body[:header_length], body[header_length:]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"the request is not valid JSON: {e.msg} at byte {e.pos}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the request must be a JSON object")
    return doc, rest


def parse_infer(body: bytes, header_length: int | None) -> InferRequest:
    """The tensors of an inference request, from JSON data or binary data after the JSON header."""
    doc, binary = _header(body, header_length)
    json_part = body if header_length is None else body[:header_length]
    has_literals = b"true" in json_part or b"false" in json_part
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError(f"{where} must be an object with a 'name'")
        name, datatype, shape = spec["name"], spec.get("datatype"), spec.get("shape")
        where = f"inputs[{i}] ({name!r})"
        if name in tensors:
            raise ProtocolError(f"{where} is given twice")
        if datatype not in DATATYPES:
            raise ProtocolError(f"{where}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ProtocolError(f"{where}: 'shape' must be a list of non-negative integers")
        dtype, count = DATATYPES[datatype], math.prod(shape)
        params = spec.get("parameters") or {}
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(binary):
                raise ProtocolError(f"{where}: binary_data_size {size!r} does not fit shape {shape} of {datatype}")
            array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += size
        else:
            if "data" not in spec:
                raise ProtocolError(f"{where} has neither 'data' nor binary data")
            try:
                array = _numbers(spec["data"], dtype, exact=has_literals)
            except (TypeError, ValueError, OverflowError):
                raise ProtocolError(f"{where}: 'data' must be numbers of {datatype}") from None
            if array.size != count:
                raise ProtocolError(f"{where}: {array.size} values in 'data' for shape {shape}")
            array = array.reshape(shape)
        tensors[name] = array
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data after the last tensor")
    requested, binary_out = _requested_outputs(doc)
    return InferRequest(doc.get("id") if isinstance(doc.get("id"), str) else None, tensors, requested, binary_out)


def _numbers(data: Any, dtype: np.dtype[Any], exact: bool) -> np.ndarray:
    """JSON tensor data as ``dtype``; strings, nulls and booleans are not numbers. numpy reads a
    boolean among numbers as 1 or 0, so a body with any true or false is checked value by value."""
    raw = np.asarray(data)
    if raw.dtype.kind not in "iuf" or (dtype.kind == "i" and raw.dtype.kind == "f"):
        raise ValueError("not numbers")
    if exact and any(isinstance(v, bool) for v in np.asarray(data, dtype=object).ravel()):
        raise ValueError("booleans")
    return raw.astype(dtype)


def _requested_outputs(doc: dict[str, Any]) -> tuple[list[str], set[str]]:
    params = doc.get("parameters") or {}
    all_binary = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    asked = doc.get("outputs")
    if asked is None:
        return list(OUTPUTS), set(OUTPUTS) if all_binary else set()
    if not isinstance(asked, list):
        raise ProtocolError("'outputs' must be a list")
    names, binary = [], set()
    for i, out in enumerate(asked):
        if not isinstance(out, dict) or out.get("name") not in OUTPUTS:
            raise ProtocolError(f"outputs[{i}] must name one of {', '.join(OUTPUTS)}")
        names.append(out["name"])
        if (out.get("parameters") or {}).get("binary_data", all_binary):
            binary.add(out["name"])
    return names, binary


def _float_input(req: InferRequest, name: str, shape: tuple[int | None, ...], label: str) -> np.ndarray:
    array = req.tensors[name]
    if array.dtype.kind != "f":
        raise ProtocolError(f"input {name!r} must be FP32 or FP64, not {array.dtype.name}")
    dims = ", ".join("-1" if d is None else str(d) for d in shape)
    if array.ndim != len(shape) or any(d is not None and d != n for d, n in zip(shape, array.shape, strict=True)):
        raise ProtocolError(f"input {name!r} has shape {list(array.shape)}; the model takes [{dims}] ({label})")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(array, dtype=np.float32)
    bad = np.argwhere(~np.isfinite(out))
    if len(bad):
        raise ProtocolError(f"input {name!r}: the value at {bad[0].tolist()} is not a finite float32 number")
    return out


def to_batch(req: InferRequest, spec: ModelSpec, limits: Limits) -> Batch:
    """Check the tensors against the model and the limits, as /predict does."""
    unknown = set(req.tensors) - set(INPUTS)
    if unknown:
        raise ProtocolError(f"unknown input {sorted(unknown)[0]!r}; the model takes x, h0, c0 and lengths")
    if "x" not in req.tensors:
        raise ProtocolError("input 'x' is required")
    x = _float_input(req, "x", (None, None, spec.input_size), "batch, steps, features")
    batch, steps = x.shape[:2]
    if not 1 <= batch <= limits.max_batch_size:
        raise ProtocolError(f"input 'x' has {batch} sequences; between 1 and {limits.max_batch_size} are allowed")
    if not 1 <= steps <= limits.max_steps:
        raise ProtocolError(f"input 'x' has {steps} steps; between 1 and {limits.max_steps} are allowed")
    if x.size > limits.max_total_values:
        raise ProtocolError(f"input 'x' has {x.size} values; at most {limits.max_total_values} are allowed")
    if ("h0" in req.tensors) != ("c0" in req.tensors):
        raise ProtocolError("inputs 'h0' and 'c0' go together: give both or neither")
    state = (spec.num_layers, batch, spec.hidden_size)
    if "h0" in req.tensors:
        h0 = _float_input(req, "h0", state, "layers, batch, hidden")
        c0 = _float_input(req, "c0", state, "layers, batch, hidden")
    else:
        h0 = c0 = np.zeros(state, dtype=np.float32)
    lengths = np.full(batch, steps, dtype=np.int32)
    if "lengths" in req.tensors:
        given = req.tensors["lengths"]
        if given.dtype.kind != "i" or given.shape != (batch,):
            raise ProtocolError(f"input 'lengths' must be INT32 or INT64 of shape [{batch}]")
        bad = np.flatnonzero((given < 1) | (given > steps))
        if len(bad):
            raise ProtocolError(f"input 'lengths': lengths[{bad[0]}] = {given[bad[0]]} is outside 1..{steps}")
        lengths = given.astype(np.int32)
    return Batch(x, h0, c0, lengths)


def output_tensors(results: list[SequenceResult], batch: Batch) -> dict[str, np.ndarray]:
    y = np.zeros((len(results), batch.x.shape[1], results[0].outputs.shape[1]), dtype=np.float32)
    for i, r in enumerate(results):
        y[i, : len(r.outputs)] = r.outputs
    hn = np.ascontiguousarray(np.stack([r.hn for r in results], axis=1))
    cn = np.ascontiguousarray(np.stack([r.cn for r in results], axis=1))
    return {"y": y, "hn": hn, "cn": cn}


def encode_infer(
    req: InferRequest, spec: ModelSpec, results: list[SequenceResult], batch: Batch
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    tensors = output_tensors(results, batch)
    outputs, blobs = [], []
    for name in req.outputs:
        array = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if name in req.binary:
            blob = array.astype("<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel()
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": spec.name, "model_version": spec.version, "outputs": outputs}
    if req.id is not None:
        answer["id"] = req.id
    header = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def model_metadata(spec: ModelSpec, versions: list[str]) -> dict[str, Any]:
    L, H = spec.num_layers, spec.hidden_size
    return {
        "name": spec.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, -1, spec.input_size]},
            {"name": "h0", "datatype": "FP32", "shape": [L, -1, H]},
            {"name": "c0", "datatype": "FP32", "shape": [L, -1, H]},
            {"name": "lengths", "datatype": "INT32", "shape": [-1]},
        ],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, -1, spec.output_size]},
            {"name": "hn", "datatype": "FP32", "shape": [L, -1, H]},
            {"name": "cn", "datatype": "FP32", "shape": [L, -1, H]},
        ],
    }
