"""The FastAPI application: lifespan (load and warm the model), error mapping, OpenAPI example."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from . import tracing
from .model.contract import ModelSpec
from .model.engine import Engine
from .pipeline.control import ModelControl
from .pipeline.errors import ServiceError
from .pipeline.registry import Registry
from .protocols import oip_grpc
from .protocols.fastpath import FastPath
from .protocols.handlers import error_for
from .protocols.oip_routes import router as oip_router
from .protocols.rest_routes import router
from .protocols.websocket import Connections
from .server import protocol
from .server.middleware import OPEN_ROUTES, ApiKeyAuth, RequestContext
from .server.shutdown import watch_for_stop
from .settings import Settings, get_settings
from .ui.routes import PAGES
from .ui.routes import router as ui_router

log = logging.getLogger("service.app")


def example_request(spec: ModelSpec) -> dict[str, Any]:
    """A request the served model accepts: three steps near the training data's means."""
    means = spec.metadata.get("feature_means") or [0.0] * spec.input_size
    steps = [[round(float(m) * (1 + 0.05 * k), 2) for m in means] for k in range(3)]
    return {"inputs": [steps], "h0": None, "c0": None}


def _nested(dims: list[tuple[int, int]]) -> dict[str, Any]:
    """A JSON Schema of nested arrays of numbers, each level with its (min, max) item count."""
    node: dict[str, Any] = {"type": "number"}
    for low, high in reversed(dims):
        node = {"type": "array", "minItems": low, "maxItems": high, "items": node}
    return node


def shape_request_schema(schema: dict[str, Any], spec: ModelSpec, s: Settings) -> None:
    """Write the served model's shapes and the limits into the /predict request schema."""
    props = schema["properties"]
    props["inputs"].update(_nested([(1, s.max_batch_size), (1, s.max_steps), (spec.input_size, spec.input_size)]))
    state = _nested([(1, s.max_batch_size), (spec.num_layers, spec.num_layers), (spec.hidden_size, spec.hidden_size)])
    for name in ("h0", "c0"):
        props[name] = {"anyOf": [state, {"type": "null"}], "default": None, "description": props[name]["description"]}


class ServiceApp(FastAPI):
    """FastAPI with an edge of pure ASGI middleware in front of its own stack.

    A middleware added with ``add_middleware`` runs inside FastAPI's stack (its server-error and
    exception middleware, then routing and dependencies), each costing more than the model on a small
    chunk. The edge runs first: the request context, CORS, the key check, and the fast path, which
    answers every HTTP protocol's inference routes without entering FastAPI; every other request goes
    on to ``route``, FastAPI's own handling. An unexpected exception on the fast path reaches uvicorn,
    which answers a plain-text 500 (the request log says 500 too).
    """

    edge: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.edge(scope, receive, send)

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> ServiceApp:
    s = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = s
        async with contextlib.AsyncExitStack() as stack:  # what started is stopped, whatever fails after it
            if tracing.TRACER is None and tracing.wanted():  # per worker: its own exporter thread
                tracing.start()
                stack.callback(tracing.stop)
            control = await run_in_threadpool(ModelControl.create, s)
            registry = control.registry
            stack.push_async_callback(registry.close)
            registry.start()
            control.start()
            stack.push_async_callback(control.stop)
            app.state.registry = registry
            app.state.control = control
            app.state.stream_connections = Connections(s.stream_max_connections)
            if s.grpc_port is not None:
                grpc_server = await oip_grpc.GrpcServer.start(app.state, registry, s, app.version)
                stack.push_async_callback(grpc_server.close)
            else:  # gRPC's calls come in apart from the requests uvicorn counts
                registry.admission.lone = protocol.lone_request
            app.state.ready = True
            watch_for_stop()
            engine = registry.default_plane.engine
            log.info("ready: %s v%s on %s (%s)", engine.spec.name, engine.spec.version, engine.device, engine.provider)
            try:
                yield
            finally:
                app.state.ready = False

    app = ServiceApp(
        title="LSTM inference service",
        summary="Per-step outputs and final states of an LSTM, with streaming by passing states back.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if s.docs else None,
        redoc_url="/redoc" if s.docs else None,
        openapi_url="/openapi.json" if s.docs else None,
    )
    app.include_router(router)
    app.include_router(oip_router)
    if s.ui:
        app.include_router(ui_router)

    async def typed_error(request: Request, exc: Exception) -> Response:
        """A ServiceError a route's dependency raised, in its protocol's shape."""
        assert isinstance(exc, ServiceError)
        status, body, headers, content_type = error_for(request.url.path)(exc)
        return Response(body, status_code=status, headers=headers, media_type=content_type.decode())

    app.add_exception_handler(ServiceError, typed_error)
    # Outside FastAPI's own stack, outermost first: RequestContext, CORS, the key check, traces, the fast path.
    edge: ASGIApp = FastPath(app.route, app) if s.fast_path else app.route
    if tracing.enabled():  # else not even one test per request
        edge = tracing.TraceRequests(edge)
    if s.api_keys:
        # The page's own files are open when it is on: what it shows comes through the API, with the user's key.
        open_routes = OPEN_ROUTES | (frozenset(PAGES) if s.ui else frozenset())
        edge = ApiKeyAuth(edge, keys=s.api_keys, open_routes=open_routes)
    if s.cors_origins:
        edge = CORSMiddleware(
            edge,
            allow_origins=s.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Inference-Header-Content-Length"],
            expose_headers=["X-Request-ID", "Inference-Header-Content-Length", "Retry-After"],
        )
    app.edge = RequestContext(edge, metrics_on=s.metrics)

    described: list[Engine] = []  # the engine the cached schema describes: the default model's, as it was

    def openapi() -> dict[str, Any]:
        registry: Registry | None = getattr(app.state, "registry", None)
        engine = registry.default_plane.engine if registry is not None else None
        if app.openapi_schema and described == [engine]:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        if engine is None:
            return schema  # not cached: the example needs the model's dimensions
        described[:] = [engine]
        spec = engine.spec
        body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        body["example"] = example_request(spec)
        shape_request_schema(body["schema"], spec, s)
        schema["info"]["description"] = (
            f"Serving **{spec.name}** version {spec.version} on {engine.provider}. "
            f"Each step holds {spec.input_size} values: {', '.join(spec.feature_names)}. "
            f"Each output holds {spec.output_size}: {', '.join(spec.target_names)}. "
            f"States have {spec.num_layers} layers of {spec.hidden_size} units."
        )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


app = create_app()
