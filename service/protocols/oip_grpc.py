"""The Open Inference Protocol over gRPC: KServe v2's and Triton's ``inference.GRPCInferenceService``.

The messages are the protocol's own, as tritonclient ships them compiled (``tritonclient.grpc.service_pb2``).
``ModelInfer`` and each request of ``ModelStreamInfer`` (a bidirectional stream: a sequence's chunks, one after
the other) go through the request path every protocol shares (``DataPlane.serve``): validation, limits,
admission, the deadline, batching, server-held sequences. This module is the codec (protobuf tensors in and
out, the same rules as the JSON protocol's: ``protocols.oip``) and the errors' one mapping to gRPC status codes
(a stream answers an error in the stream and goes on). API keys come as ``authorization`` metadata; every
call is counted (``lstm_requests_total{route="grpc/<method>"}``) and logged with a request id.

Served on ``LSTM_GRPC_PORT`` (off unless set) by each worker of the server: the port is opened with
``SO_REUSEPORT``, so the kernel shares connections among the workers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import orjson
from google.protobuf.message import DecodeError
from pydantic import ValidationError
from tritonclient.grpc import service_pb2 as pb

from .. import metrics, tracing
from ..model.contract import ModelSpec
from ..pipeline.dataplane import Call, Outcome
from ..pipeline.errors import InvalidInput, ServiceError, UnknownModel, error
from ..pipeline.registry import Registry
from ..pipeline.rules import Limits
from ..server.middleware import CLIENT_CLOSED_REQUEST as CLIENT_GONE
from ..server.middleware import REQUEST_ID, access, authorized, new_request_id
from ..server.shutdown import DRAINING, is_ready
from ..settings import Settings
from . import oip

log = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
# The pipeline's statuses as gRPC codes, once (the HTTP status each error stands for: pipeline.errors).
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(exc: ServiceError) -> tuple[int, grpc.StatusCode, str]:
    """The HTTP status, gRPC code and message of an error: the JSON protocol's message (field and index)."""
    status, body, _ = oip.error_response(exc)
    return status, CODES.get(status, grpc.StatusCode.INTERNAL), str(orjson.loads(body)["error"])


class GrpcCodec:
    """One ``ModelInferRequest`` (already parsed: its model picks the request path) and its response."""

    def __init__(self, request: pb.ModelInferRequest) -> None:
        self.request = request

    def decode(self, body: bytes, spec: ModelSpec, limits: Limits) -> Call[oip.Answer]:
        req = self.request
        raw = list(req.raw_input_contents)
        if raw and len(raw) != len(req.inputs):
            msg = f"{len(raw)} raw_input_contents for {len(req.inputs)} inputs: one each, in order"
            raise InvalidInput([error(("raw_input_contents",), msg, "raw_contents")])
        if not req.inputs:
            raise InvalidInput([error(("inputs",), "Input 'x' is required", "missing")])
        arrays: dict[str, np.ndarray] = {}
        for i, tensor in enumerate(req.inputs):
            loc: tuple[str | int, ...] = ("inputs", i)
            dtype = oip.input_dtype(tensor.name, tensor.datatype, loc, arrays)
            shape = tuple(tensor.shape)
            if len(shape) > oip.MAX_DIMS or any(d < 0 for d in shape):
                raise InvalidInput([error((*loc, "shape"), f"{list(shape)[:16]} is not a shape", "shape")])
            count = math.prod(shape)  # Python's integers: a huge shape never wraps round to a small count
            if raw:
                if tensor.HasField("contents"):
                    msg = "Give contents or raw_input_contents, not both"
                    raise InvalidInput([error((*loc, "contents"), msg, "both")])
                if len(raw[i]) != count * dtype.itemsize:
                    msg = f"{len(raw[i])} bytes do not hold shape {list(shape)} of {tensor.datatype}"
                    raise InvalidInput([error(("raw_input_contents", i), msg, "raw_contents")])
                array = np.frombuffer(raw[i], dtype=dtype).reshape(shape)
            else:
                field = oip.CONTENTS[tensor.datatype]
                values = getattr(tensor.contents, field)
                if len(values) != count:
                    msg = f"{len(values)} values do not fill shape {list(shape)}"
                    raise InvalidInput([error((*loc, "contents", field), msg, "contents")])
                array = np.fromiter(values, dtype=dtype, count=count).reshape(shape)
            arrays[tensor.name] = array
        outputs = oip.requested_outputs([o.name for o in req.outputs])
        try:
            parameters = oip.RequestParameters.model_validate(
                {key: getattr(p, p.WhichOneof("parameter_choice") or "bool_param") for key, p in req.parameters.items()}
            )
        except ValidationError as e:
            raise oip.invalid(e, ("parameters",)) from None
        return oip.call_of(arrays, parameters, (outputs, set(), req.id or None), spec, limits)

    def encode(self, call: Call[oip.Answer], outcome: Outcome, spec: ModelSpec) -> pb.ModelInferResponse:
        assert call.context is not None
        response = pb.ModelInferResponse(model_name=spec.name, model_version=spec.version, id=call.context.id or "")
        for name, array in oip.output_arrays(call.context, outcome, spec).items():
            response.outputs.add(name=name, datatype="FP32", shape=list(array.shape))
            response.raw_output_contents.append(array.astype("<f4", copy=False).tobytes())
        return response


async def _no_body() -> bytes:
    return b""  # the message came whole, and is parsed: the codec holds it


class InferenceService:
    """The service's methods, over the registry that serves (model control swaps its versions in place)."""

    def __init__(
        self, state: Any, registry: Registry, keys: list[str], version: str, max_streams: int, idle_s: float
    ) -> None:
        self.state = state  # the app's: its readiness
        self.registry = registry  # model control changes what it serves, in place
        self.keys = [k.encode() for k in keys]
        self.version = version  # the server's
        self.max_streams, self.idle_s = max_streams, idle_s  # as for the WebSocket stream's connections
        self.streams = 0

    async def infer(self, body: bytes) -> pb.ModelInferResponse:
        request = _parsed(pb.ModelInferRequest, body)
        plane = self.registry.get(request.model_name, request.model_version or None)
        codec = GrpcCodec(request)
        response: pb.ModelInferResponse = await plane.serve(codec, _no_body, bool(request.model_version), len(body))
        return response

    def handlers(self) -> grpc.GenericRpcHandler:
        def unary(name: str, method: Callable[..., Awaitable[Any]], request: Any, open_: bool = False) -> Any:
            # bytes in: parsed by the handler, after the key check, a malformed message a clean INVALID_ARGUMENT
            return grpc.unary_unary_rpc_method_handler(
                self._call(name, method, request, open_), response_serializer=_serialized
            )

        methods = {
            "ServerLive": unary("ServerLive", self._live, pb.ServerLiveRequest, open_=True),
            "ServerReady": unary("ServerReady", self._ready, pb.ServerReadyRequest, open_=True),
            "ModelReady": unary("ModelReady", self._model_ready, pb.ModelReadyRequest),
            "ServerMetadata": unary("ServerMetadata", self._server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": unary("ModelMetadata", self._model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": unary("ModelInfer", self.infer, None),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self._stream, response_serializer=_serialized),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def _authorized(self, context: grpc.aio.ServicerContext) -> bool:
        if not self.keys:
            return True
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        return authorized(given if isinstance(given, str) else "", self.keys)

    def _call(
        self, name: str, method: Callable[..., Awaitable[Any]], message: Any, open_: bool
    ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
        route = f"grpc/{name}"

        async def handle(body: bytes, context: grpc.aio.ServicerContext) -> Any:
            start, status, request_id = time.perf_counter(), 500, _request_id(context)
            context.set_trailing_metadata((("x-request-id", request_id),))
            with tracing.OFF if open_ else _span(name, context, request_id) as top:  # probes: not traced
                try:
                    if not open_ and not self._authorized(context):
                        metrics.REJECTED.labels("unauthorized").inc()
                        status = 401
                        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "Not authenticated")
                    try:
                        answer = await method(body if message is None else _parsed(message, body))
                        status = 200
                        return answer
                    except ServiceError as exc:
                        status, code, text = status_of(exc)
                        if "Retry-After" in exc.headers:  # as over HTTP: when trying again may succeed
                            trailer = (("x-request-id", request_id), ("retry-after", exc.headers["Retry-After"]))
                            context.set_trailing_metadata(trailer)
                        await context.abort(code, text)
                    except Exception:  # a fault of the server's: logged here, told apart from the client's
                        log.exception("%s failed", route)
                        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
                except asyncio.CancelledError:  # the client cancelled, or its deadline passed
                    status = CLIENT_GONE
                    raise
                finally:
                    _answered(route, status, start, request_id, context)
                    _record(top, status)

        return handle

    async def _stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request answered in order; an error is answered in the stream (``error_message``), which goes on.
        A stream is held open at most ``idle_s`` without a request, and a worker holds at most ``max_streams``."""
        stream_id = _request_id(context)
        context.set_trailing_metadata((("x-request-id", stream_id),))
        if not self._authorized(context):
            metrics.REJECTED.labels("unauthorized").inc()
            _answered("grpc/ModelStreamInfer", 401, time.perf_counter(), stream_id, context)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "Not authenticated")
        if self.streams >= self.max_streams:
            metrics.REJECTED.labels("queue_full").inc()
            _answered("grpc/ModelStreamInfer", 429, time.perf_counter(), stream_id, context)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {self.max_streams} streams per worker")
        self.streams += 1
        try:
            messages = aiter(requests)
            for n in itertools.count():
                try:
                    async with asyncio.timeout(self.idle_s):
                        body = await anext(messages)
                except (StopAsyncIteration, TimeoutError):  # the client is done, or idle too long: the stream ends
                    return
                start, status, request_id = time.perf_counter(), 500, f"{stream_id}-{n}"
                with _span("ModelStreamInfer", context, request_id) as top:  # one per message, as a unary call
                    try:
                        response = pb.ModelStreamInferResponse(infer_response=await self.infer(body))
                        status = 200
                    except ServiceError as exc:
                        status, _, text = status_of(exc)
                        response = pb.ModelStreamInferResponse(error_message=text, infer_response=_echo(body))
                    except asyncio.CancelledError:
                        status = CLIENT_GONE
                        raise
                    except Exception:  # a fault of the server's: answered in the stream, which goes on
                        log.exception("grpc/ModelStreamInfer failed")
                        answer = _echo(body)
                        response = pb.ModelStreamInferResponse(error_message="internal error", infer_response=answer)
                    finally:
                        _answered("grpc/ModelStreamInfer", status, start, request_id, context)
                        _record(top, status)
                yield response
        finally:
            self.streams -= 1

    async def _live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def _ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=is_ready(self.state))

    async def _model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        try:
            self.registry.get(request.name, request.version or None)
        except UnknownModel:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=is_ready(self.state))

    async def _server_metadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=oip.SERVER_NAME, version=self.version, extensions=oip.EXTENSIONS)

    async def _model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        registry = self.registry
        spec = registry.get(request.name, request.version or None).engine.spec
        meta = oip.model_metadata(spec, registry.versions(request.name))
        response = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for kind in ("inputs", "outputs"):
            for t in meta[kind]:
                getattr(response, kind).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return response


def _serialized(message: Any) -> bytes:
    return bytes(message.SerializeToString())


def _echo(body: bytes) -> pb.ModelInferResponse:
    """What identifies a request that failed in a stream: its model, version and id, where they parse."""
    try:
        request = pb.ModelInferRequest.FromString(body)
    except DecodeError:
        return pb.ModelInferResponse()
    return pb.ModelInferResponse(
        model_name=request.model_name[:256], model_version=request.model_version[:64], id=request.id[:256]
    )


def _parsed(message: Any, body: bytes) -> Any:
    try:
        return message.FromString(body)
    except DecodeError:
        raise InvalidInput([error(("body",), f"Not a {message.__name__} message", "protobuf")]) from None


def _request_id(context: grpc.aio.ServicerContext) -> str:
    given = dict(context.invocation_metadata() or ()).get("x-request-id")
    return given if isinstance(given, str) and REQUEST_ID.fullmatch(given) else new_request_id()


def _span(method: str, context: grpc.aio.ServicerContext, request_id: str) -> Any:
    """A call's server span (or a stream message's), continuing the trace its ``traceparent`` metadata names."""
    if tracing.TRACER is None:
        return tracing.OFF
    carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method, "lstm.request_id": request_id}
    return tracing.server_span(f"{SERVICE}/{method}", carrier, **attributes)


def _record(span: Any, status: int) -> None:
    """A call's outcome on its span: the pipeline's status, and the gRPC code it was answered with."""
    tracing.record_status(span, status)
    code = grpc.StatusCode.OK if status == 200 else CODES.get(status, grpc.StatusCode.INTERNAL)
    span.set_attribute("rpc.grpc.status_code", code.value[0])


def _answered(route: str, status: int, start: float, request_id: str, context: grpc.aio.ServicerContext) -> None:
    elapsed = time.perf_counter() - start
    metrics.answered(route, status, elapsed)
    access(
        request_id=request_id,
        method="GRPC",
        path=route,
        status=status,
        duration_ms=round(elapsed * 1000, 3),
        client=(context.peer() or "").rsplit(":", 1)[0],
    )


def address(host: str, port: int) -> str:
    """host:port as gRPC writes it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """This worker's gRPC server on ``LSTM_GRPC_PORT`` (``SO_REUSEPORT``: every worker listens on it). On a stop
    signal it stops taking calls at once, beside HTTP's drain, and lets those in progress finish."""

    def __init__(self, server: grpc.aio.Server, grace_s: float) -> None:
        self.server, self.grace_s = server, grace_s
        self._drain = asyncio.get_running_loop().create_task(self._stop_on_signal())

    @classmethod
    async def start(cls, state: Any, registry: Registry, s: Settings, version: str) -> GrpcServer:
        assert s.grpc_port is not None
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", s.max_body_bytes),
                ("grpc.max_send_message_length", -1),
            ]
        )
        service = InferenceService(state, registry, s.api_keys, version, s.stream_max_connections, s.stream_idle_s)
        server.add_generic_rpc_handlers((service.handlers(),))
        server.add_insecure_port(address(s.host, s.grpc_port))  # raises where it cannot listen
        await server.start()
        return cls(server, s.request_timeout_s)

    async def _stop_on_signal(self) -> None:
        while not DRAINING.is_set():
            await asyncio.sleep(0.1)
        await self.server.stop(grace=self.grace_s)

    async def close(self) -> None:
        if DRAINING.is_set():
            await self._drain  # stopping already, since the signal
            return
        self._drain.cancel()
        await self.server.stop(grace=self.grace_s)
