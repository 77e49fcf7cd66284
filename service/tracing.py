"""OpenTelemetry traces of the request path: off unless the standard ``OTEL_*`` variables ask for them.

Each request (an HTTP request, a gRPC call, a WebSocket or gRPC stream message) is a server span that
continues the client's W3C ``traceparent``. Within it the pipeline opens ``decode``, ``infer`` (with
``queue``, the wait in the batcher's queue, and ``explain``) and ``encode``. The batcher's merged model
call is a span of its own, ``batch``, linked to the ``infer`` span of every request it served: one call
serves many traces, so it is the child of none.

Off, every helper here answers a shared do-nothing object after one test of ``TRACER``: no span, no
context, no allocation. On, each worker builds its own provider in the lifespan (the SDK's exporter
thread does not survive a fork), with a batch span processor and the exporter that
``OTEL_TRACES_EXPORTER`` names; the SDK itself reads the rest (``OTEL_EXPORTER_OTLP_*``,
``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_PROPAGATORS``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanContext, SpanKind, Status, StatusCode, Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .model.contract import ModelSpec
from .server.middleware import OPEN_ROUTES, final_status

UNTRACED = OPEN_ROUTES  # health probes and metrics scrapes: a span each every few seconds tells nothing
TRACER: Tracer | None = None  # set while traces are on (``start``), else None
SERVICE_NAME = "lstm-service"  # the resource's service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say
EXPORTERS = ("otlp", "console")  # what OTEL_TRACES_EXPORTER may name, besides "none"
PROTOCOLS = ("http/protobuf", "grpc")  # OTLP's transports (OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL)
_provider: Any = None  # the SDK's TracerProvider this module built, shut down by ``stop``
_extract: Callable[[Mapping[str, str]], otel_context.Context] | None = None  # OTEL_PROPAGATORS', while on
FLUSH_S = 3.0  # at stop, the longest the spans still queued may take to go out (a collector down: lost)


def wanted(env: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters the environment asks for; none (traces off) unless ``OTEL_TRACES_EXPORTER`` names one, or
    it is unset and an OTLP endpoint is given. ``OTEL_SDK_DISABLED=true`` turns traces off whatever else says.
    A name this server cannot export to, or an unknown OTLP protocol, is a ``ValueError`` (refused at start)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        names = ["otlp"] if endpoint else []
    else:
        names = [n.strip() for n in named.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER: {unknown[0]!r} is not one of none, {', '.join(EXPORTERS)}")
    if "otlp" in names and _protocol(env) not in PROTOCOLS:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {_protocol(env)!r} is not one of {', '.join(PROTOCOLS)}")
    return names


def _protocol(env: Mapping[str, str]) -> str:
    given = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    return (given or "http/protobuf").strip().lower()  # the specification's default


def enabled() -> bool:
    """Whether requests are traced in this process: a tracer is installed, or the environment asks for one."""
    return TRACER is not None or bool(wanted())


def check() -> None:
    """Refuse (``ValueError``) trace settings this server cannot use, before any worker starts: the propagators
    (FastAPI reads them at import too, traces on or off), the exporter and protocol, and the SDK's own variables
    (a provider is built from them, and dropped)."""
    _propagators()
    names = wanted()
    if names:
        try:
            _from_env(names).shutdown()
        except Exception as e:
            raise ValueError(f"traces: {e}") from None


def _propagators() -> Callable[[Mapping[str, str]], otel_context.Context]:
    """What reads a trace from headers, as ``OTEL_PROPAGATORS`` says: imported only while traces are on (the
    import reads the variable and fails on a name it does not know)."""
    try:
        from opentelemetry import propagate
    except Exception as e:
        raise ValueError(f"OTEL_PROPAGATORS: {e}") from None
    return propagate.extract


def start(provider: Any = None) -> None:
    """Trace with ``provider`` (an SDK ``TracerProvider``; a test's, with its own exporter), or with one built from
    the environment as ``wanted`` reads it. Kept to this module: the process's global provider stays the
    API's own, so a library that traces on its own is not sent to our exporter by accident."""
    global TRACER, _provider, _extract
    _extract = _propagators()
    if provider is None:
        provider = _provider = _from_env(wanted())
    TRACER = provider.get_tracer("service")


def stop() -> None:
    """Stop tracing, and give the spans still queued ``FLUSH_S`` to go out: a collector that is down or slow
    must not hold up the stop (a provider a test gave is the test's to shut down)."""
    global TRACER, _provider, _extract
    TRACER = _extract = None
    if _provider is not None:
        closing = threading.Thread(target=_provider.shutdown, name="trace-flush", daemon=True)
        _provider = None
        closing.start()
        closing.join(FLUSH_S)


def _from_env(names: list[str]) -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME as NAME_KEY
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    given = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
    if str(given.attributes.get(NAME_KEY, "")).startswith("unknown_service"):
        given = given.merge(Resource({NAME_KEY: SERVICE_NAME}))
    # shutdown_on_exit: not at exit, where a collector that is down would hold the process up (``stop``)
    provider = TracerProvider(resource=given, sampler=sampler(), shutdown_on_exit=False)
    for name in names:
        if name == "console":
            exporter: Any = ConsoleSpanExporter()
        elif _protocol(os.environ) == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            exporter = GrpcExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            exporter = HttpExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class _Off:
    """What every helper answers while traces are off: a context manager around the do-nothing span."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


OFF = _Off()


def span(name: str) -> Any:
    """A child of the current span, current within the ``with`` (or OFF). An exception through it marks
    nothing: most are a client's errors, and the request's span says which were the server's."""
    if TRACER is None:
        return OFF
    return TRACER.start_as_current_span(name, record_exception=False, set_status_on_exception=False)


def current() -> Span:
    """The current span (the do-nothing span while off): attributes go on it when ``is_recording()``."""
    return trace.get_current_span() if TRACER is not None else INVALID_SPAN


def request_attributes(spec: ModelSpec, sequences: int, steps: int) -> dict[str, Any]:
    """A request's model and what it asks of it (sequences, and real steps over them)."""
    return {
        "lstm.model.name": spec.name,
        "lstm.model.version": spec.version,
        "lstm.sequences": sequences,
        "lstm.steps": steps,
    }


def server_span(name: str, carrier: Mapping[str, str] | None = None, **attributes: Any) -> Any:
    """A request's server span, current within the ``with`` (or OFF): it continues the trace ``carrier`` (headers,
    gRPC metadata) names, or with none the current one (a stream's message, within its connection's). Its
    outcome is the caller's to say (``record_status``): a client's error is not the server's."""
    if TRACER is None or _extract is None:
        return OFF
    parent = _extract(carrier) if carrier is not None else None
    return TRACER.start_as_current_span(
        name,
        context=parent,
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,  # a client's error is no exception of the server's; the log has the server's
        set_status_on_exception=False,
    )


def record_status(span: Span, status: int) -> None:
    """A server span's answer as the pipeline's status (HTTP's, whatever the protocol: ``lstm.status``); a
    server's fault (5xx) marks the span an error, a client's (4xx) does not."""
    span.set_attribute("lstm.status", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


Queued = tuple[Span, SpanContext]  # a request in the batcher's queue: its queue span, and its infer span's context


def queued() -> Queued | None:
    """For a request going into the batcher's queue: its ``queue`` span, started now, and the context of the
    span it is in, which the batch that runs it links to; None while off."""
    if TRACER is None:
        return None
    waiting = TRACER.start_span("queue")
    return waiting, trace.get_current_span().get_span_context()


def batch_attributes(spec: ModelSpec, requests: int, sequences: int, steps: int) -> dict[str, Any]:
    """A merged model call's model, and the requests, sequences and real steps it runs."""
    return {**request_attributes(spec, sequences, steps), "lstm.batch.requests": requests}


def batch_span(requests: list[SpanContext], attributes: dict[str, Any]) -> Any:
    """The merged model call, a span of its own linked to the ``infer`` span of each sampled request it served
    (or OFF when it served none: a batch is kept exactly when a trace it serves is)."""
    sampled = [Link(c) for c in requests if c.trace_flags.sampled]
    if TRACER is None or not sampled:
        return OFF
    root = otel_context.Context()  # no parent: it serves many requests' traces
    return TRACER.start_as_current_span("batch", context=root, links=sampled, attributes=attributes)


class FollowLinks(sampling.Sampler):
    """The provider's sampler, but a span with no parent and a sampled link (a batch) is always sampled: the
    batch of a sampled request is there whatever the sampler's ratio (with no sampled link it is never made,
    ``batch_span``)."""

    def __init__(self, sampler: sampling.Sampler) -> None:
        self.sampler = sampler

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> sampling.SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and links and any(link.context.trace_flags.sampled for link in links):
            return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, attributes)
        return self.sampler.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"FollowLinks{{{self.sampler.get_description()}}}"


def sampler() -> FollowLinks:
    """The sampler ``OTEL_TRACES_SAMPLER`` names (the SDK's default: parent-based, always on), following links."""
    return FollowLinks(sampling._get_from_env_or_default())


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


class TraceRequests:
    """Pure ASGI, after the key check (a request without a key is no one's trace): each HTTP request but health
    and metrics in a server span that continues the client's ``traceparent``. A WebSocket connection's messages
    are spans of their own (``service.protocols.websocket``): the handshake's trace is made current for the
    connection, as their parent. Installed only while traces are on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _extract is None or scope["type"] not in ("http", "websocket") or scope["path"] in UNTRACED:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            token = otel_context.attach(_extract(_headers(scope)))
            try:
                await self.app(scope, receive, send)
            finally:
                otel_context.detach(token)
            return
        route = metrics.route_label(scope["path"])  # bounded: the metrics' label, not a template
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"], "url.scheme": scope["scheme"]}
        request_id = scope.get("state", {}).get("request_id")  # RequestContext's, outside
        if request_id:
            attributes["lstm.request_id"] = request_id
        with server_span(f"{scope['method']} {route}", _headers(scope), **attributes) as top:
            status = 500  # unless the app answers otherwise

            async def sent(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, sent)
            finally:
                status = final_status(scope, status)
                top.set_attribute("http.response.status_code", status)
                record_status(top, status)
