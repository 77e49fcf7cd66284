"""Each HTTP protocol's inference, from ASGI's scope and receive to status, body and headers, in the
protocol's own error shape. The FastAPI routes and the edge's fast path (``fastpath``) both answer with
these, so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from starlette.types import Receive, Scope

from ..pipeline.errors import InvalidInput, ServiceError, error
from ..pipeline.registry import Registry
from ..server.http import BINARY, JSON, body_reader
from . import oip, rest, timeseries

Answer = tuple[int, bytes, dict[str, str], bytes]  # status, body, headers, content type
_HEADER_LENGTH = oip.HEADER_LENGTH.encode()


async def serve_rest(
    registry: Registry, name: str | None, version: str | None, scope: Scope, receive: Receive
) -> Answer:
    """``/predict`` (``name`` None: the default model) and ``/v1/models/{name}[/versions/{version}]/predict``."""
    try:
        plane = registry.default_plane if name is None else registry.get(name, version)
        answer = await plane.serve(rest.CODEC, body_reader(scope, receive, plane.limits), pinned=version is not None)
    except ServiceError as exc:
        return rest_error(exc)
    return 200, answer, {}, JSON


def rest_error(exc: ServiceError) -> Answer:
    status, detail, headers = rest.error_response(exc)
    return status, orjson.dumps(detail), headers, JSON


async def serve_oip(registry: Registry, name: str, version: str | None, scope: Scope, receive: Receive) -> Answer:
    """``/v2/models/{name}[/versions/{version}]/infer``: JSON, or the binary tensor data extension."""
    try:
        plane = registry.get(name, version)
        codec = oip.OipCodec(header_length(scope))
        reader = body_reader(scope, receive, plane.limits)
        answer, answer_header = await plane.serve(codec, reader, pinned=version is not None)
    except ServiceError as exc:
        return oip_error(exc)
    if answer_header is None:
        return 200, answer, {}, JSON
    return 200, answer, {oip.HEADER_LENGTH: str(answer_header)}, BINARY


def oip_error(exc: ServiceError) -> Answer:
    status, body, headers = oip.error_response(exc)
    return status, body, headers, JSON


def timeseries_error(exc: ServiceError) -> Answer:
    status, body, headers = timeseries.error_response(exc)
    return status, body, headers, JSON


def error_for(path: str) -> Callable[[ServiceError], Answer]:
    """The error shape of the protocol a path belongs to."""
    if path.startswith("/v2"):
        return oip_error
    return timeseries_error if path == timeseries.PATH else rest_error


def header_length(scope: Scope) -> int | None:
    """The binary extension's ``Inference-Header-Content-Length``, if the request gives one."""
    declared = next((v for k, v in scope["headers"] if k == _HEADER_LENGTH), None)
    if declared is None:
        return None
    if not (declared.isascii() and declared.isdigit()) or len(declared) > 18:
        msg = f"{declared[:32].decode('latin-1')!r} is not a byte count"
        raise InvalidInput([error(("headers", oip.HEADER_LENGTH), msg, "header_length")])
    return int(declared)
