"""The REST routes: ``/predict`` and ``/v1/models/...`` through the ``DataPlane`` with the REST codec,
model descriptions, health, metrics, and the WebSocket stream's route."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, WebSocket
from fastapi.responses import JSONResponse

from .. import metrics
from ..model.engine import Engine
from ..pipeline.dataplane import DataPlane
from ..pipeline.errors import NotReady, UnknownModel
from ..pipeline.registry import Registry
from ..pipeline.registry import of as registry_of
from ..server.shutdown import is_ready
from ..settings import Settings
from . import timeseries
from .handlers import serve_rest
from .schemas import (
    ErrorResponse,
    Health,
    HorizonsInfo,
    LimitsInfo,
    ModelInfo,
    ModelList,
    ModelRef,
    ModelVersions,
    PredictRequest,
    PredictResponse,
    TimeSeriesError,
    TimeSeriesRequest,
    TimeSeriesResponse,
    inline_schema,
)
from .websocket import POLICY, TRY_LATER, refuse, serve_stream


async def get_registry(request: Request) -> Registry:
    return registry_of(request.app.state)  # NotReady (503) while the models load


RegistryDep = Annotated[Registry, Depends(get_registry)]


async def get_plane(registry: RegistryDep) -> DataPlane:
    return registry.default_plane


async def get_engine(plane: Annotated[DataPlane, Depends(get_plane)]) -> Engine:
    return plane.engine


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
PlaneDep = Annotated[DataPlane, Depends(get_plane)]

router = APIRouter()


PREDICT_DOCS: dict[str, Any] = dict(
    response_class=Response,
    responses={
        200: {"model": PredictResponse, "description": "Per-step outputs and final states, one entry per sequence."},
        413: {"model": ErrorResponse, "description": "The body exceeds the size limit."},
        422: {"model": ErrorResponse, "description": "The body is invalid: `loc` names the field, sequence and step."},
        503: {"description": "Not ready, or too many requests in progress (retry after `Retry-After` seconds)."},
        504: {"description": "The request ran past its deadline (`LSTM_REQUEST_TIMEOUT_S`)."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(PredictRequest.model_json_schema())}},
        }
    },
)


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such model or version in the repository."}}
V1_PREDICT_DOCS = {**PREDICT_DOCS, "responses": {**PREDICT_DOCS["responses"], **NOT_FOUND}}


async def serve_predict(request: Request, registry: Registry, name: str | None, version: str | None) -> Response:
    status, body, headers, content_type = await serve_rest(registry, name, version, request.scope, request.receive)
    return Response(body, status_code=status, headers=headers, media_type=content_type.decode())


@router.post("/predict", summary="Run a batch of sequences on the default model", **PREDICT_DOCS)
async def predict(request: Request, registry: RegistryDep) -> Response:
    """Sequences go in with optional initial states; per-step outputs and final states come back.

    To stream a long sequence, send it in chunks and pass each answer's `hn` and `cn`
    back as the next chunk's `h0` and `c0`: the outputs equal one whole-sequence call.

    With `"explain": true` the answer also holds, per sequence, layer, step and unit, the
    forget, input and output gates, the candidate values and the cell and hidden states
    (a numpy reference of the LSTM equations on the model's own weights; lower limits apply).
    """
    # With LSTM_FAST_PATH on (the default) the edge's FastPath answers this route (and the other
    # inference routes) before FastAPI sees it, with the same pipeline; this serves it when it is off.
    return await serve_predict(request, registry, None, None)


@router.post("/v1/models/{name}/predict", summary="Run a batch on a model of the repository", **V1_PREDICT_DOCS)
async def predict_model(request: Request, name: str, registry: RegistryDep) -> Response:
    """As `/predict`, on the named model (its latest version; the pinned one for the default model)."""
    return await serve_predict(request, registry, name, None)


@router.post(
    "/v1/models/{name}/versions/{version}/predict", summary="Run a batch on one model version", **V1_PREDICT_DOCS
)
async def predict_version(request: Request, name: str, version: str, registry: RegistryDep) -> Response:
    """As `/predict`, on the named model and version."""
    return await serve_predict(request, registry, name, version)


@router.post(
    timeseries.PATH,
    summary="Forecast time series ahead, with quantiles (KServe's time series API)",
    response_class=Response,
    responses={
        200: {"model": TimeSeriesResponse, "description": "One forecast per input series, from its last step."},
        400: {"model": TimeSeriesError, "description": "Invalid input: `param` names the field at fault."},
        404: {"model": TimeSeriesError, "description": "No such model."},
        413: {"model": TimeSeriesError, "description": "The body exceeds the size limit."},
        503: {"model": TimeSeriesError, "description": "Not ready, or too many requests in progress (`Retry-After`)."},
        504: {"model": TimeSeriesError, "description": "The request ran past its deadline."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(TimeSeriesRequest.model_json_schema())}},
        }
    },
)
async def timeseries_forecast(request: Request, registry: RegistryDep) -> Response:
    """KServe's time series forecast API on this server's models: each input series holds the model's features
    at each step (`multivariate_time_series`), and is forecast `options.horizon` steps ahead of its last step
    (at most the model's horizons), with the `options.quantiles` its calibrated intervals give."""
    status, body, headers, content_type = await timeseries.serve(registry, request.scope, request.receive)
    return Response(body, status_code=status, headers=headers, media_type=content_type.decode())


@router.get("/v1/models", response_model=ModelList, summary="Every model and version the service serves")
async def list_models(registry: RegistryDep) -> ModelList:
    return ModelList(
        models=[
            ModelVersions(name=n, versions=registry.versions(n), serving_version=registry.get(n).engine.spec.version)
            for n in registry.names()
        ],
        default=ModelRef(name=registry.default[0], version=registry.default[1]),
    )


@router.get("/v1/models/{name}", response_model=ModelInfo, responses=NOT_FOUND, summary="A model of the repository")
async def named_model_info(name: str, registry: RegistryDep) -> ModelInfo:
    return describe(registry.get(name))


@router.get(
    "/v1/models/{name}/versions/{version}", response_model=ModelInfo, responses=NOT_FOUND, summary="One model version"
)
async def version_info(name: str, version: str, registry: RegistryDep) -> ModelInfo:
    return describe(registry.get(name, version))


@router.get("/model", response_model=ModelInfo, summary="The default model, its provider and the limits in force")
async def model_info(plane: PlaneDep) -> ModelInfo:
    return describe(plane)


def describe(plane: DataPlane) -> ModelInfo:
    engine, spec = plane.engine, plane.engine.spec
    return ModelInfo(
        name=spec.name,
        version=spec.version,
        task=spec.metadata.get("task"),
        input_size=spec.input_size,
        output_size=spec.output_size,
        hidden_size=spec.hidden_size,
        num_layers=spec.num_layers,
        feature_names=spec.feature_names,
        target_names=spec.target_names,
        provider=engine.provider,
        providers=engine.providers,
        device=engine.device,
        limits=LimitsInfo(**{name: getattr(plane.limits, name) for name in LimitsInfo.model_fields}),
        horizons=HorizonsInfo(
            steps=spec.horizons.steps,
            targets=spec.horizons.targets,
            quantiles=list(spec.horizons.quantile_range) if spec.horizons.quantile_range else None,
        ),
        metrics=spec.metadata.get("metrics", {}),
    )


@router.get("/health/live", response_model=Health, summary="The process is up")
async def live() -> Health:
    return Health(status="alive")


@router.get(
    "/health/ready",
    response_model=Health,
    responses={503: {"model": Health, "description": "Not ready: the model is loading or warming up."}},
    summary="The model is loaded and warmed up",
)
async def ready(request: Request) -> Response:
    if is_ready(request.app.state):
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready"}, status_code=503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def prometheus(settings: SettingsDep) -> Response:
    if not settings.metrics:
        raise HTTPException(status_code=404, detail="metrics are off (LSTM_METRICS=false)")
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


@router.websocket("/v1/models/{name}/stream")
async def stream(ws: WebSocket, name: str) -> None:
    """Stream chunks over one connection that keeps the LSTM states (see service/protocols/websocket.py)."""
    try:
        plane = registry_of(ws.app.state).get(name)
    except NotReady as e:
        await refuse(ws, TRY_LATER, str(e))
        return
    except UnknownModel as e:
        await refuse(ws, POLICY, str(e))
        return
    s: Settings = ws.app.state.settings
    await serve_stream(ws, plane, ws.app.state.stream_connections, s.stream_max_streams, s.stream_idle_s)
