"""The edge's fast path: the inference routes of every HTTP protocol, answered straight from ASGI.

FastAPI's middleware stack, routing, dependency injection and response objects cost more than the
model for a small streaming chunk. In front of FastAPI (``service.app.ServiceApp``) this answers

- ``POST /predict`` and ``POST /v1/models/{name}[/versions/{version}]/predict`` (REST codec),
- ``POST /v2/models/{name}[/versions/{version}]/infer`` (Open Inference Protocol),
- ``POST /v1/timeseries/forecast`` (KServe's time series API: the body names the model),

through the same ``DataPlane``, codecs and error mappings as the documented FastAPI routes (which
serve them when ``LSTM_FAST_PATH=false``); every other request passes on untouched.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from ..pipeline.errors import ServiceError
from ..pipeline.registry import of as registry_of
from ..server.http import respond
from . import timeseries
from .handlers import error_for, serve_oip, serve_rest


def route(path: str) -> tuple[str, str | None, str | None] | None:
    """(protocol, model, version) of an inference route, or None: ``("rest", None, None)`` for /predict."""
    if path == "/predict":
        return "rest", None, None
    if path == timeseries.PATH:
        return "timeseries", None, None
    parts = path.split("/")  # "", "v1" or "v2", "models", name, ["versions", version,] action
    if len(parts) not in (5, 7) or parts[2] != "models" or not parts[3]:
        return None
    version = None
    if len(parts) == 7:
        if parts[4] != "versions" or not parts[5]:
            return None
        version = parts[5]
    if parts[1] == "v1" and parts[-1] == "predict":
        return "rest", parts[3], version
    if parts[1] == "v2" and parts[-1] == "infer":
        return "oip", parts[3], version
    return None


class FastPath:
    def __init__(self, app: ASGIApp, owner: FastAPI) -> None:
        self.app = app
        self.owner = owner  # its state holds the registry the lifespan loads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = route(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if found is None or self.owner.dependency_overrides:  # overridden dependencies: FastAPI's routes honour them
            await self.app(scope, receive, send)
            return
        protocol, name, version = found
        try:
            registry = registry_of(self.owner.state)
        except ServiceError as exc:
            status, body, headers, content_type = error_for(scope["path"])(exc)
        else:
            if protocol == "oip":
                assert name is not None
                status, body, headers, content_type = await serve_oip(registry, name, version, scope, receive)
            elif protocol == "timeseries":
                status, body, headers, content_type = await timeseries.serve(registry, scope, receive)
            else:
                status, body, headers, content_type = await serve_rest(registry, name, version, scope, receive)
        await respond(send, status, body, headers, content_type)
