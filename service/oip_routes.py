"""HTTP routes of the Open Inference Protocol (``/v2``): health, metadata, readiness, inference.

Errors take the protocol's shape, ``{"error": "..."}``: 400 for a bad request, 404 for an
unknown model or version, and the service's 413, 503 (with Retry-After) and 504.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from . import oip
from .engine import ModelSpec
from .errors import SERVICE_ERRORS, ProtocolError, ServiceError, error_body
from .fastpath import read_body
from .predictor import INLINE_DECODE_BYTES
from .registry import Registry
from .routes import get_registry
from .shutdown import DRAINING

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])
RegistryDep = Annotated[Registry, Depends(get_registry)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text}
    for code, text in [
        (400, 'A malformed request, or tensors that do not fit the model: `{"error": "..."}`.'),
        (404, "No such model or version."),
        (413, "The body exceeds the size limit."),
        (503, "Not ready, or too many requests in progress."),
        (504, "The request ran past its deadline."),
    ]
}


def protocol_error(exc: ServiceError | ProtocolError) -> JSONResponse:
    if isinstance(exc, ProtocolError):
        return JSONResponse({"error": str(exc)}, status_code=400)
    status, body, headers = error_body(exc)
    detail = body["detail"]
    message = detail if isinstance(detail, str) else "; ".join(f"{e['loc']}: {e['msg']}" for e in detail)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@router.get("/health/live", summary="Server live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server ready", responses={503: {"description": "Not ready."}})
async def ready(request: Request) -> JSONResponse:
    is_ready = bool(getattr(request.app.state, "ready", False)) and not DRAINING.is_set()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": "lstm-service", "version": request.app.version, "extensions": ["binary_tensor_data"]}


def _tensor_schema(required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": required,
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": list(oip.DATATYPES)},
            "parameters": {"type": "object"},
            "data": {"type": "array"},
        },
    }


INFER_DOCS: dict[str, Any] = {
    "responses": {
        **ERRORS,
        200: {
            "description": "Output tensors y, hn and cn; with binary outputs asked for, the JSON header is followed "
            "by their bytes (`Inference-Header-Content-Length` gives the header's length).",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["model_name", "outputs"],
                        "properties": {
                            "model_name": {"type": "string"},
                            "model_version": {"type": "string"},
                            "id": {"type": "string"},
                            "outputs": {"type": "array", "items": _tensor_schema(["name", "shape", "datatype"])},
                        },
                    }
                },
                "application/octet-stream": {},
            },
        },
    },
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["inputs"],
                        "properties": {
                            "id": {"type": "string"},
                            "parameters": {"type": "object"},
                            "inputs": {
                                "type": "array",
                                "minItems": 1,
                                "items": _tensor_schema(["name", "shape", "datatype"]),
                            },
                            "outputs": {"type": "array", "items": _tensor_schema(["name"])},
                        },
                    },
                },
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
    except SERVICE_ERRORS as exc:
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
    try:
        predictor = registry.get(name, version)
        body = await read_body(request.scope, request.receive, predictor.limits.max_body_bytes)
        if body is None:
            return Response(status_code=400)
        declared = request.headers.get(oip.HEADER_LENGTH)
        if declared is not None and not declared.isdigit():
            raise ProtocolError(f"Inference-Header-Content-Length {declared!r} is not a number")
        header_length = int(declared) if declared is not None else None
        if len(body) <= INLINE_DECODE_BYTES:
            req = oip.parse_infer(body, header_length)
        else:
            req = await run_in_threadpool(oip.parse_infer, body, header_length)
        batch = oip.to_batch(req, predictor.engine.spec, predictor.limits)
        results = await predictor.run(batch)
        answer, answer_header = oip.encode_infer(req, predictor.engine.spec, results, batch)
    except (*SERVICE_ERRORS, ProtocolError) as exc:
        return protocol_error(exc)
    if answer_header is None:
        return Response(answer, media_type="application/json")
    return Response(
        answer, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(answer_header)}
    )
