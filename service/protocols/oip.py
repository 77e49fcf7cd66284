"""The Open Inference Protocol codec (the "V2" protocol of KServe, Triton and MLServer), REST flavour:
request and response bodies, JSON tensor data and the binary tensor data extension.

Inputs are the graph's own (``model.contract``): ``x`` [batch, steps, features], optional ``h0``
and ``c0`` [layers, batch, hidden] (both or neither; zeros when absent) and optional ``lengths``
[batch] (each sequence's steps; all of ``steps`` when absent). Outputs: ``y`` [batch, steps,
outputs], zero past each sequence's length, and ``hn``, ``cn`` [layers, batch, hidden] after each
sequence's own last step. The JSON envelope is checked by the pydantic models below (which also
document it in OpenAPI); tensor data by the pipeline's rules. Errors: ``{"error": "..."}`` naming
the field and index at fault, 400 for invalid input. Knows nothing of HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from ..model.batch import Batch
from ..model.contract import FINAL_STATES, INPUTS, OUTPUTS, ModelSpec
from ..pipeline import jsondata, rules
from ..pipeline.dataplane import Call, Outcome
from ..pipeline.errors import ChunkOutOfOrder, InvalidInput, Loc, ServiceError, error
from ..pipeline.rules import Limits
from ..pipeline.sequences import SequenceRef, chunk_number, sequence_id

HEADER_LENGTH = "inference-header-content-length"
SERVER_NAME = "lstm-service"  # in the protocol's server metadata
EXTENSIONS = ["binary_tensor_data", "sequence", "model_repository"]  # of the protocol, announced in its metadata
# The input datatypes taken: their numpy type, and the field of gRPC's InferTensorContents that holds them.
DATATYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
}
CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents", "INT64": "int64_contents"}
assert CONTENTS.keys() == DATATYPES.keys()
MAX_DIMS = 8  # of a tensor's shape
PLACES = rules.Places(x=("x",), h0=("h0",), c0=("c0",))
Size = Annotated[StrictInt, Field(ge=0)]


class _Parameters(BaseModel):
    model_config = ConfigDict(extra="allow")  # the protocol's parameters are open; unknown ones are ignored


class RequestParameters(_Parameters):
    binary_data_output: StrictBool | None = Field(default=None, description="Every output as binary data.")
    sequence_id: Any = Field(
        default=None,
        description="Triton's sequence extension: the server-held sequence of this chunk, an unsigned integer or a "
        "string (checked by service.pipeline.sequences).",
        json_schema_extra={"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "minLength": 1}]},
    )
    sequence_start: StrictBool | None = Field(default=None, description="This chunk starts (or restarts) it.")
    sequence_end: StrictBool | None = Field(default=None, description="This chunk ends it.")
    sequence_chunk: Any = Field(
        default=None,
        description="This service's addition: the chunk's number in its sequence (0 for the start, then 1, 2, ...), "
        "so that a retried chunk is never applied twice.",
        json_schema_extra={"type": "integer", "minimum": 0},
    )


class InputParameters(_Parameters):
    binary_data_size: Size | None = Field(default=None, description="Bytes of this tensor after the JSON header.")


class OutputParameters(_Parameters):
    binary_data: StrictBool | None = Field(default=None, description="This output as binary data.")


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr = Field(description="One of the model's inputs: x, h0, c0, lengths.")
    shape: list[Size] = Field(max_length=MAX_DIMS)
    datatype: StrictStr = Field(description=f"One of {', '.join(DATATYPES)}.")
    parameters: InputParameters | None = None
    data: Any = Field(
        default=None, description="Row-major values, flat or nested.", json_schema_extra={"type": "array"}
    )


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr = Field(description="One of the model's outputs: y, hn, cn.")
    parameters: OutputParameters | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: StrictStr | None = None
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(default=None, min_length=1)


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[float] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


@dataclass
class Answer:
    """What the response needs of the request: its outputs, which of them binary, its id, its padded length."""

    outputs: list[str]
    binary: set[str]
    id: str | None
    steps: int


def _envelope(reader: jsondata.Reader) -> InferenceRequest:
    """The request's envelope, checked by the pydantic models; tensor data stays as read (lazy, unconverted)."""
    doc = reader.document
    if not jsondata.is_object(doc):
        raise InvalidInput([error((), "The request should be a JSON object", "model_attributes_type")])
    names = jsondata.keys(doc)
    envelope = {k: reader.plain(doc[k]) for k in names if k != "inputs"}
    if "inputs" in names:
        inputs = doc["inputs"]
        reader.arrays += int(jsondata.is_list(inputs))  # its own bracket; its items count themselves
        envelope["inputs"] = (
            [_tensor(reader, t) if jsondata.is_object(t) else reader.plain(t) for t in inputs]
            if jsondata.is_list(inputs)
            else reader.plain(inputs)
        )
    try:
        return InferenceRequest.model_validate(envelope)
    except ValidationError as e:
        raise invalid(e) from None


def invalid(e: ValidationError, within: Loc = ()) -> InvalidInput:
    """pydantic's errors as the pipeline's, each naming its place (``within`` the request)."""
    errors = [error((*within, *err["loc"]), err["msg"], err["type"]) for err in e.errors(include_url=False)]
    return InvalidInput(errors[: rules.MAX_ERRORS])


class RepositoryIndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ready: StrictBool = Field(default=False, description="Only the versions that serve.")


def index_request(body: bytes) -> RepositoryIndexRequest:
    """The model repository extension's index request: ``{}`` or ``{"ready": true}``; every field checked."""
    try:
        return RepositoryIndexRequest.model_validate_json(body or b"{}")
    except ValidationError as e:
        raise invalid(e) from None


class LoadParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")  # Triton's "config" and "file:..." overrides are refused, not ignored


class RepositoryLoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parameters: LoadParameters | None = Field(
        default=None, description="None taken: the repository's files and `config.pbtxt` decide what loads."
    )


class UnloadParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unload_dependents: StrictBool = Field(default=False, description="Accepted; no model here depends on another.")


class RepositoryUnloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parameters: UnloadParameters | None = None


def control_request(body: bytes, model: type[BaseModel]) -> BaseModel:
    """A load or unload request (``{}`` or empty: the usual), every field checked."""
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as e:
        raise invalid(e) from None


def _tensor(reader: jsondata.Reader, tensor: Any) -> dict[str, Any]:
    return {k: tensor[k] if k == "data" else reader.plain(tensor[k]) for k in jsondata.keys(tensor)}


def _sequence(parameters: RequestParameters | None) -> SequenceRef | None:
    """Triton's sequence extension: ``sequence_id`` names the server-held sequence; ``sequence_start`` and
    ``sequence_end`` mean nothing without it, and are refused rather than ignored."""
    p = parameters or RequestParameters()
    if p.sequence_id is None:
        given = [f for f in ("sequence_start", "sequence_end") if getattr(p, f)]  # false flags say nothing
        given += ["sequence_chunk"] if p.sequence_chunk is not None else []
        if given:
            raise InvalidInput([error(("parameters", given[0]), f"{given[0]} needs a sequence_id", "missing")])
        return None
    loc, start = ("parameters", "sequence_id"), bool(p.sequence_start)
    chunk_loc = ("parameters", "sequence_chunk")
    chunk = None if p.sequence_chunk is None else chunk_number(p.sequence_chunk, start, chunk_loc)
    return SequenceRef(sequence_id(p.sequence_id, loc), start, bool(p.sequence_end), loc, chunk, chunk_loc)


class OipCodec:
    """One /v2 inference request; ``header_length`` is its Inference-Header-Content-Length, if any."""

    def __init__(self, header_length: int | None) -> None:
        self.header_length = header_length

    def decode(self, body: bytes, spec: ModelSpec, limits: Limits) -> Call[Answer]:
        header, binary = self._split(body)
        read = lambda reader: self._read(reader, binary, spec, limits)  # noqa: E731
        return jsondata.decode(header, read, loc=())

    def _read(self, reader: jsondata.Reader, binary: bytes, spec: ModelSpec, limits: Limits) -> Call[Answer]:
        req = _envelope(reader)
        arrays: dict[str, np.ndarray] = {}
        offset = 0
        for i, tensor in enumerate(req.inputs):
            loc: tuple[str | int, ...] = ("inputs", i)
            dtype = input_dtype(tensor.name, tensor.datatype, loc, arrays)
            count = math.prod(tensor.shape)
            size = tensor.parameters.binary_data_size if tensor.parameters is not None else None
            if size is not None:
                if tensor.data is not None:
                    raise InvalidInput([error((*loc, "data"), "Give data or binary_data_size, not both", "both")])
                if size != count * dtype.itemsize or offset + size > len(binary):
                    msg = f"{size} bytes do not hold shape {tensor.shape} of {tensor.datatype}, or run past the body"
                    raise InvalidInput([error((*loc, "parameters", "binary_data_size"), msg, "binary_size")])
                array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(tensor.shape)
                offset += size
            else:
                if tensor.data is None:
                    raise InvalidInput([error((*loc, "data"), "Field required (or binary_data_size)", "missing")])
                array = reader.tensor_data(tensor.data, (*loc, "data"), dtype, tensor.shape)
            arrays[tensor.name] = array
        if offset != len(binary):
            msg = f"{len(binary) - offset} bytes of binary data after the last tensor"
            raise InvalidInput([error(("body",), msg, "binary_size")])
        outputs, wanted_binary = _requested_outputs(req)
        return call_of(arrays, req.parameters, (outputs, wanted_binary, req.id), spec, limits)

    def _split(self, body: bytes) -> tuple[bytes, bytes]:
        n = self.header_length
        if n is None:
            return body, b""
        if not 0 < n <= len(body):
            msg = f"Inference-Header-Content-Length {n} is outside the body ({len(body)} bytes)"
            raise InvalidInput([error(("headers", HEADER_LENGTH), msg, "header_length")])
        return body[:n], body[n:]

    def encode(self, call: Call[Answer], outcome: Outcome, spec: ModelSpec) -> tuple[bytes, int | None]:
        """The response body and, when any output is binary, the JSON header's length."""
        answer_of = call.context
        assert answer_of is not None
        arrays = output_arrays(answer_of, outcome, spec)
        entries, blobs = [], []
        for name in answer_of.outputs:
            array = arrays[name]
            entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
            if name in answer_of.binary:
                blob = array.astype("<f4").tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = array.ravel()
            entries.append(entry)
        answer: dict[str, Any] = {"model_name": spec.name, "model_version": spec.version, "outputs": entries}
        if answer_of.id is not None:
            answer["id"] = answer_of.id
        header = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        if not blobs:
            return header, None
        return header + b"".join(blobs), len(header)


def output_arrays(answer_of: Answer, outcome: Outcome, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The outputs asked for, as the graph's tensors: ``y`` padded to the request's steps (zeros past each
    sequence's length), ``hn`` and ``cn`` [layers, batch, hidden]."""
    results = outcome.results
    arrays: dict[str, np.ndarray] = {}
    if "y" in answer_of.outputs:
        y = np.zeros((len(results), answer_of.steps, spec.output_size), dtype=np.float32)
        for i, r in enumerate(results):
            y[i, : len(r.outputs)] = r.outputs
        arrays["y"] = y
    for name, field in zip(FINAL_STATES, ("hn", "cn"), strict=True):
        if name in answer_of.outputs:
            arrays[name] = np.ascontiguousarray(np.stack([getattr(r, field) for r in results], axis=1))
    return arrays


def input_dtype(name: str, datatype: str, loc: Loc, arrays: dict[str, np.ndarray]) -> np.dtype[Any]:
    """An input tensor's numpy type, once its name is the graph's and not given before."""
    if name not in INPUTS:
        msg = f"Unknown input {name[:64]!r}; the model takes {', '.join(INPUTS)}"
        raise InvalidInput([error((*loc, "name"), msg, "unknown_input")])
    if name in arrays:
        raise InvalidInput([error((*loc, "name"), f"Input {name!r} is given twice", "duplicate")])
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        msg = f"Datatype {datatype[:64]!r} is not one of {', '.join(DATATYPES)}"
        raise InvalidInput([error((*loc, "datatype"), msg, "datatype")])
    return dtype


def call_of(
    arrays: dict[str, np.ndarray],
    parameters: RequestParameters | None,
    outputs: tuple[list[str], set[str], str | None],
    spec: ModelSpec,
    limits: Limits,
) -> Call[Answer]:
    """The input tensors, the request's parameters and its outputs (names, which binary, its id) as the
    pipeline's call (every rule checked)."""
    batch = _batch(arrays, spec, limits)
    answer = Answer(*outputs, arrays["x"].shape[1])
    ref = _sequence(parameters)
    if ref is not None:
        rules.sequence_batch(batch, ref, "h0" in arrays, PLACES)
    return Call(batch, context=answer, sequence=ref)


def requested_outputs(names: list[str]) -> list[str]:
    """The outputs asked for by name, in order (every output when none is): each the graph's, once."""
    if not names:
        return list(OUTPUTS)
    for i, name in enumerate(names):
        if name not in OUTPUTS:
            msg = f"Unknown output {name[:64]!r}; the model gives {', '.join(OUTPUTS)}"
            raise InvalidInput([error(("outputs", i, "name"), msg, "unknown_output")])
        if name in names[:i]:
            raise InvalidInput([error(("outputs", i, "name"), f"Output {name!r} is asked for twice", "duplicate")])
    return names


def _requested_outputs(req: InferenceRequest) -> tuple[list[str], set[str]]:
    all_binary = bool(req.parameters and req.parameters.binary_data_output)
    if req.outputs is None:
        return list(OUTPUTS), set(OUTPUTS) if all_binary else set()
    names = requested_outputs([out.name for out in req.outputs])
    binary = set()
    for out in req.outputs:
        asked = out.parameters.binary_data if out.parameters is not None else None
        if all_binary if asked is None else asked:
            binary.add(out.name)
    return names, binary


def _float(arrays: dict[str, np.ndarray], name: str, shape: tuple[int | None, ...], meaning: str) -> np.ndarray:
    array = arrays[name]
    if array.dtype.kind != "f":
        raise InvalidInput([error((name,), f"Should be FP32 or FP64, not {array.dtype.name}", "datatype")])
    rules.check_shape(array, (name,), shape, meaning)
    return rules.finite_float32(array, (name,))


def _batch(arrays: dict[str, np.ndarray], spec: ModelSpec, limits: Limits) -> Batch:
    """The tensors as the pipeline's batch: each sequence cut to its own length, so padding costs nothing."""
    graph = spec.graph
    if "x" not in arrays:
        raise InvalidInput([error(("inputs",), "Input 'x' is required", "missing")])
    x = arrays["x"]
    if x.ndim == 3:
        rules.check_counts(x.shape[0], x.shape[1], spec, limits, PLACES)  # before a sequence is cut out
    x = _float(arrays, "x", (None, None, spec.input_size), graph["x"].meaning)
    batch, steps = x.shape[:2]
    state = (spec.num_layers, batch, spec.hidden_size)
    h0 = _float(arrays, "h0", state, graph["h0"].meaning) if "h0" in arrays else None
    c0 = _float(arrays, "c0", state, graph["c0"].meaning) if "c0" in arrays else None
    lengths = arrays.get("lengths")
    if lengths is None:
        seqs = list(x)
    else:
        if lengths.dtype.kind != "i":
            raise InvalidInput([error(("lengths",), "Should be INT32 or INT64", "datatype")])
        rules.check_shape(lengths, ("lengths",), (batch,), graph["lengths"].meaning)
        bad = np.flatnonzero((lengths < 1) | (lengths > steps))
        if len(bad):
            at = int(bad[0])
            msg = f"{int(lengths[at])} is outside 1..{steps} (the steps of x)"
            raise InvalidInput([error(("lengths", at), msg, "length")])
        seqs = [x[i, :n] for i, n in enumerate(lengths.tolist())]
    return rules.batch(seqs, h0, c0, spec, limits, PLACES, padded_steps=steps)


def error_response(exc: ServiceError) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers: the protocol's one mapping of the pipeline's errors (400 for invalid input)."""
    if isinstance(exc, InvalidInput):
        status = exc.status if isinstance(exc, ChunkOutOfOrder) else 400  # a conflict with the sequence: 409
        return status, orjson.dumps({"error": exc.lines()}), {}
    return exc.status, orjson.dumps({"error": str(exc)}), dict(exc.headers)


def model_metadata(spec: ModelSpec, versions: list[str]) -> dict[str, Any]:
    graph = spec.graph

    def entries(names: tuple[str, ...]) -> list[dict[str, Any]]:
        return [{"name": n, "datatype": graph[n].datatype, "shape": list(graph[n].dims)} for n in names]

    return {
        "name": spec.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": entries(INPUTS),
        "outputs": entries(OUTPUTS),
    }
