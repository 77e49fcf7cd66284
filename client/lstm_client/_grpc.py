"""The gRPC transport (``grpc://`` and ``grpcs://`` URLs): the Open Inference Protocol's ``ModelInfer``, with
the protocol's messages and stub as tritonclient ships them. Needs the ``grpc`` extra."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import ServiceError, _Attempt

try:
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc
except ImportError as e:  # pragma: no cover (the extra is installed where the tests run)
    raise ImportError("grpc:// URLs need the grpc extra: pip install 'lstm-client[grpc]'") from e

# The HTTP status each gRPC code stands for, as the service maps its errors (docs/protocols.md); else 500.
STATUSES = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,  # a call too large (429, too many streams, is for streams only)
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# Another attempt may get an answer: the service was unavailable or late (or unreachable). ABORTED is a
# conflict, retried only when the service said when (retry-after).
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def failed(error: grpc.RpcError) -> _Attempt:
    """A failed call as an attempt: the HTTP status its code stands for, the detail, whether to send it again.
    The service marks every call it takes with an ``x-request-id`` trailer: UNAVAILABLE or DEADLINE_EXCEEDED
    without one never reached it (no connection, or gRPC gave up), and has no status."""
    code, detail = error.code(), error.details() or ""
    trailers = dict(error.trailing_metadata() or ())
    asked = trailers.get("retry-after")
    asked = asked if isinstance(asked, str) and asked else None
    retry = code in RETRY_CODES or (code == grpc.StatusCode.ABORTED and asked is not None)
    if "x-request-id" not in trailers and code in RETRY_CODES:
        problem = ServiceError(None, f"no answer: {code.name} {detail}", code.name)
    else:
        problem = ServiceError(STATUSES.get(code, 500), detail, code.name)
    return _Attempt(retry, asked, problem, error)


def target(url: str) -> tuple[str, bool]:
    """host:port of a grpc:// or grpcs:// URL, and whether it is TLS."""
    scheme, _, rest = url.partition("://")
    address, _, path = rest.partition("/")
    if not address.rpartition(":")[2].isdigit() or path:
        raise ValueError(f"{url!r}: name the host and port, and nothing after them: grpc://host:port")
    return address, scheme.lower() == "grpcs"


def request(
    model: str,
    version: str | None,
    inputs: Sequence[Any],
    h0: Any,
    c0: Any,
    sequence: dict[str, Any] | None,
) -> tuple[pb.ModelInferRequest, list[int]]:
    """The call for a batch of sequences ([steps][features] each; padded into one tensor, with their lengths
    when they differ) and states ([batch][layers][hidden], sent as the graph's [layers, batch, hidden]); and
    each sequence's steps."""
    seqs = [np.asarray(s, dtype=np.float32) for s in inputs]
    if not seqs:
        raise ValueError("inputs: no sequence")
    for i, s in enumerate(seqs):
        if s.ndim != 2 or not len(s) or s.shape[1:] != seqs[0].shape[1:]:
            shape = "[steps][features], at least one step, each step as long as inputs[0]'s"
            raise ValueError(f"inputs[{i}]: shape {list(s.shape)} is not {shape}")
    lengths = [len(s) for s in seqs]
    x = np.zeros((len(seqs), max(lengths, default=0), seqs[0].shape[1] if seqs else 0), dtype=np.float32)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    tensors = [("x", x)]
    if len(set(lengths)) > 1:
        tensors.append(("lengths", np.asarray(lengths, dtype=np.int32)))
    if (h0 is None) != (c0 is None):
        raise ValueError("h0 and c0: give both or neither")
    if h0 is not None:
        for name, state in (("h0", np.asarray(h0, dtype=np.float32)), ("c0", np.asarray(c0, dtype=np.float32))):
            if state.ndim != 3:
                raise ValueError(f"{name}: {list(state.shape)} is not [batch][layers][hidden]")
            tensors.append((name, np.ascontiguousarray(state.swapaxes(0, 1))))
    call = pb.ModelInferRequest(model_name=model, model_version=version or "")
    for name, array in tensors:
        datatype = "INT32" if array.dtype == np.int32 else "FP32"
        call.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        call.raw_input_contents.append(array.tobytes())
    if sequence is not None:
        parameters = call.parameters
        parameters["sequence_id"].string_param = str(sequence["id"])
        parameters["sequence_start"].bool_param = sequence["start"]
        parameters["sequence_end"].bool_param = sequence["end"]
        parameters["sequence_chunk"].int64_param = sequence["chunk"]
    return call, lengths


def answer(response: pb.ModelInferResponse, lengths: list[int]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Each sequence's outputs [steps, outputs], and the final states as [batch, layers, hidden]."""
    arrays = {
        t.name: np.frombuffer(raw, dtype="<f4").reshape(tuple(t.shape))
        for t, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
    outputs = [arrays["y"][i, :n].copy() for i, n in enumerate(lengths)]
    return outputs, arrays["hn"].swapaxes(0, 1).copy(), arrays["cn"].swapaxes(0, 1).copy()


def credentials(tls: bool) -> grpc.ChannelCredentials | None:
    return grpc.ssl_channel_credentials() if tls else None


class Channel:
    """A blocking channel to the service."""

    def __init__(self, url: str, metadata: list[tuple[str, str]], timeout: float) -> None:
        address, tls = target(url)
        self.channel = grpc.secure_channel(address, credentials(True)) if tls else grpc.insecure_channel(address)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.metadata, self.timeout = metadata, timeout
        self.closed = False

    def infer(self, call: pb.ModelInferRequest, trace: dict[str, str]) -> pb.ModelInferResponse:
        """One attempt (``trace``: the caller's trace context, sent as metadata)."""
        if self.closed:
            raise RuntimeError("the client is closed")
        try:
            return self.stub.ModelInfer(call, timeout=self.timeout, metadata=[*self.metadata, *trace.items()])
        except grpc.RpcError as e:
            raise failed(e) from e

    def close(self) -> None:
        self.closed = True
        self.channel.close()


class AsyncChannel:
    """A channel of grpc.aio, opened on first use (within the caller's event loop)."""

    def __init__(self, url: str, metadata: list[tuple[str, str]], timeout: float) -> None:
        self.address, self.tls = target(url)
        self.metadata, self.timeout = metadata, timeout
        self.channel: grpc.aio.Channel | None = None
        self.stub: Any = None
        self.closed = False

    async def infer(self, call: pb.ModelInferRequest, trace: dict[str, str]) -> pb.ModelInferResponse:
        if self.closed:
            raise RuntimeError("the client is closed")
        if self.channel is None:
            aio = grpc.aio
            self.channel = (
                aio.secure_channel(self.address, credentials(True)) if self.tls else aio.insecure_channel(self.address)
            )
            self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        try:
            return await self.stub.ModelInfer(call, timeout=self.timeout, metadata=[*self.metadata, *trace.items()])
        except grpc.RpcError as e:
            raise failed(e) from e

    async def close(self) -> None:
        self.closed = True
        if self.channel is not None:
            await self.channel.close()
