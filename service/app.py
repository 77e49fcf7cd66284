"""The FastAPI application: lifespan (load and warm the model), error mapping, OpenAPI example."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from . import repository
from .engine import Engine, ModelSpec
from .errors import InvalidInput, PayloadTooLarge, error
from .explain import ExplainUnavailable
from .routes import router
from .settings import Settings, get_settings

log = logging.getLogger("service.app")


def example_request(spec: ModelSpec) -> dict[str, Any]:
    """A request the served model accepts: three steps near the training data's means."""
    means = spec.metadata.get("feature_means") or [0.0] * spec.input_size
    steps = [[round(float(m) * (1 + 0.05 * k), 2) for m in means] for k in range(3)]
    return {"inputs": [steps], "h0": None, "c0": None}


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = app.state.settings = settings or get_settings()
        folder = repository.resolve(s.model_repository, s.model_name, s.model_version)
        engine = await run_in_threadpool(Engine.load, folder, s.provider, s.intra_op_threads, s.inter_op_threads)
        await run_in_threadpool(engine.warmup)
        app.state.engine = engine
        app.state.ready = True
        log.info("ready: %s v%s on %s (%s)", engine.spec.name, engine.spec.version, engine.device, engine.provider)
        try:
            yield
        finally:
            app.state.ready = False

    docs = (settings or get_settings()).docs
    app = FastAPI(
        title="LSTM inference service",
        summary="Per-step outputs and final states of an LSTM, with streaming by passing states back.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.include_router(router)

    @app.exception_handler(InvalidInput)
    async def invalid_input(request: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse({"detail": exc.errors}, status_code=422)

    @app.exception_handler(PayloadTooLarge)
    async def too_large(request: Request, exc: PayloadTooLarge) -> JSONResponse:
        detail = [error(("body",), str(exc), "too_large", limit=exc.limit)]
        return JSONResponse({"detail": detail}, status_code=413)

    @app.exception_handler(ExplainUnavailable)
    async def cannot_explain(request: Request, exc: ExplainUnavailable) -> JSONResponse:
        detail = [error(("body", "explain"), f"This model cannot be explained: {exc}", "explain_unavailable")]
        return JSONResponse({"detail": detail}, status_code=422)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        engine: Engine | None = getattr(app.state, "engine", None)
        if engine is None:
            return schema  # not cached: the example needs the model's dimensions
        body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        body["example"] = example_request(engine.spec)
        spec = engine.spec
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
