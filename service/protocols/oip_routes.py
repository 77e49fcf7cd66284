"""HTTP routes of the Open Inference Protocol (``/v2``): health, metadata, readiness, inference.

Errors take the protocol's shape, ``{"error": "..."}``: 400 for a bad request, 404 for an
unknown model or version, and the service's 413, 503 (with Retry-After) and 504.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from ..model.contract import ModelSpec
from ..pipeline import control as model_control
from ..pipeline.control import ModelControl
from ..pipeline.errors import ServiceError
from ..pipeline.registry import Registry
from ..server.http import read_body
from ..server.shutdown import DRAINING, is_ready
from . import oip
from .handlers import serve_oip
from .rest_routes import get_registry
from .schemas import inline_schema

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])
REPOSITORY_BODY_MAX = 1024  # the repository extension's requests: {"ready": true}, {"parameters": {...}} at most
RegistryDep = Annotated[Registry, Depends(get_registry)]


async def get_control(request: Request) -> ModelControl:
    return model_control.of(request.app.state)  # NotReady (503) while the models load


ControlDep = Annotated[ModelControl, Depends(get_control)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text}
    for code, text in [
        (400, 'A malformed request, or tensors that do not fit the model: `{"error": "..."}`.'),
        (404, "No such model or version."),
        (408, "The body did not arrive in time."),
        (413, "The body exceeds the size limit."),
        (503, "Not ready, or too many requests in progress."),
        (504, "The request ran past its deadline."),
    ]
}


def protocol_error(exc: ServiceError) -> Response:
    status, body, headers = oip.error_response(exc)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


@router.get("/health/live", summary="Server live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server ready", responses={503: {"description": "Not ready."}})
async def ready(request: Request) -> JSONResponse:
    ready = is_ready(request.app.state)
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": oip.SERVER_NAME, "version": request.app.version, "extensions": oip.EXTENSIONS}


INDEX_DOCS: dict[str, Any] = {
    "summary": "Model repository index",
    "description": "The model repository extension's index: every version in the repository, `READY` where it "
    'serves, `UNAVAILABLE` with the reason where it does not. `{"ready": true}` lists only those that serve.',
}


@router.post(
    "/repository/index",
    operation_id="repository_index",
    responses={400: ERRORS[400], 413: ERRORS[413]},
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": inline_schema(oip.RepositoryIndexRequest.model_json_schema())}},
        }
    },
    **INDEX_DOCS,
)
async def repository_index(registry: RegistryDep, request: Request) -> list[dict[str, str]]:
    # a few bytes at most: a larger body is refused, not buffered; a slow one times out as any body does
    timeout_s = registry.default_plane.limits.body_timeout_s
    body = await read_body(request.scope, request.receive, REPOSITORY_BODY_MAX, timeout_s)
    return _index(registry, oip.index_request(body).ready)


@router.get("/repository/index", operation_id="repository_index_all", **INDEX_DOCS)
async def repository_index_all(registry: RegistryDep) -> list[dict[str, str]]:
    return _index(registry, ready_only=False)


def _index(registry: Registry, ready_only: bool) -> list[dict[str, str]]:
    entries = []
    for name, version, why in registry.index():
        if why and ready_only:
            continue
        entry = {"name": name, "version": version, "state": "UNAVAILABLE" if why else "READY"}
        entries.append({**entry, "reason": why} if why else entry)
    return entries


CONTROL_DOCS: dict[str, Any] = {
    "responses": {
        400: {
            "description": "Model control is not `explicit`, a malformed body, or a load that failed (what was "
            'serving serves on): `{"error": "..."}` says why.'
        },
        404: ERRORS[404],
        409: {"description": "The default model cannot be unloaded."},
        413: ERRORS[413],
    },
}


def _control_docs(model: type[Any]) -> dict[str, Any]:
    body = {"required": False, "content": {"application/json": {"schema": inline_schema(model.model_json_schema())}}}
    return {**CONTROL_DOCS, "openapi_extra": {"requestBody": body}}


@router.post("/repository/models/{name}/load", summary="Load a model", **_control_docs(oip.RepositoryLoadRequest))
async def repository_load(name: str, request: Request, registry: RegistryDep, control: ControlDep) -> dict[str, Any]:
    """Load the model from the repository, or load it again: each new or changed version is loaded and warmed
    off the request path, then swapped in; requests admitted before finish on the version they started on.
    Needs `LSTM_MODEL_CONTROL=explicit`."""
    await _control_body(request, registry, oip.RepositoryLoadRequest)
    change = await control.load(name)
    return {"name": name, "serving": sorted(change.planes, key=int), "loaded": change.fresh}


@router.post("/repository/models/{name}/unload", summary="Unload a model", **_control_docs(oip.RepositoryUnloadRequest))
async def repository_unload(name: str, request: Request, registry: RegistryDep, control: ControlDep) -> dict[str, Any]:
    """Stop serving every version of the model; requests admitted finish first. The default model is refused
    (409). Server-held sequences of its versions end with them. Needs `LSTM_MODEL_CONTROL=explicit`."""
    await _control_body(request, registry, oip.RepositoryUnloadRequest)
    await control.unload(name)
    return {"name": name}


async def _control_body(request: Request, registry: Registry, model: type[Any]) -> None:
    timeout_s = registry.default_plane.limits.body_timeout_s
    oip.control_request(await read_body(request.scope, request.receive, REPOSITORY_BODY_MAX, timeout_s), model)


INFER_DOCS: dict[str, Any] = {
    "responses": {
        **ERRORS,
        200: {
            "description": "Output tensors y, hn and cn; with binary outputs asked for, the JSON header is followed "
            "by their bytes (`Inference-Header-Content-Length` gives the header's length).",
            "content": {
                "application/json": {"schema": inline_schema(oip.InferenceResponse.model_json_schema())},
                "application/octet-stream": {},
            },
        },
    },
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": inline_schema(oip.InferenceRequest.model_json_schema())},
                "application/octet-stream": {},
            },
        }
    },
}


@router.get("/models/{name}", summary="Model metadata", responses=ERRORS)
async def model_metadata(name: str, registry: RegistryDep) -> Response:
    return _metadata(registry, name, None)


@router.get("/models/{name}/versions/{version}", summary="Model version metadata", responses=ERRORS)
async def version_metadata(name: str, version: str, registry: RegistryDep) -> Response:
    return _metadata(registry, name, version)


def _about(registry: Registry, name: str, version: str | None, answer: Callable[[ModelSpec], Any]) -> Response:
    try:
        spec = registry.get(name, version).engine.spec
    except ServiceError as exc:
        return protocol_error(exc)
    return JSONResponse(answer(spec))


def _metadata(registry: Registry, name: str, version: str | None) -> Response:
    return _about(registry, name, version, lambda spec: oip.model_metadata(spec, registry.versions(name)))


@router.get("/models/{name}/ready", summary="Model ready", responses=ERRORS)
async def model_ready(name: str, registry: RegistryDep) -> Response:
    return _ready(registry, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model version ready", responses=ERRORS)
async def version_ready(name: str, version: str, registry: RegistryDep) -> Response:
    return _ready(registry, name, version)


def _ready(registry: Registry, name: str, version: str | None) -> Response:
    return _about(
        registry,
        name,
        version,
        lambda spec: {"name": spec.name, "version": spec.version, "ready": not DRAINING.is_set()},
    )


@router.post("/models/{name}/infer", summary="Inference", **INFER_DOCS)
async def infer(request: Request, name: str, registry: RegistryDep) -> Response:
    """Tensors x, h0, c0 and lengths in, y, hn and cn out; JSON data or the binary tensor data extension."""
    return await _infer(request, registry, name, None)


@router.post("/models/{name}/versions/{version}/infer", summary="Inference on a version", **INFER_DOCS)
async def infer_version(request: Request, name: str, version: str, registry: RegistryDep) -> Response:
    """As `/v2/models/{name}/infer`, on one version."""
    return await _infer(request, registry, name, version)


async def _infer(request: Request, registry: Registry, name: str, version: str | None) -> Response:
    status, body, headers, content_type = await serve_oip(registry, name, version, request.scope, request.receive)
    return Response(body, status_code=status, headers=headers, media_type=content_type.decode())
