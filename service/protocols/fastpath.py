"""ASGI middleware that serves ``POST /predict`` without FastAPI's per-request machinery.

FastAPI's middleware stack, routing, dependency injection and response objects cost more than the
model for a small streaming chunk. This answers the one hot route straight from the ASGI messages,
in front of FastAPI (``service.app.ServiceApp``), through the same ``DataPlane`` and REST codec as
the documented FastAPI route; every other request passes through untouched.
"""

from __future__ import annotations

import orjson
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from ..pipeline.dataplane import DataPlane
from ..pipeline.errors import ServiceError
from ..server.http import body_reader, respond
from . import rest


class PredictFastPath:
    def __init__(self, app: ASGIApp, owner: Starlette, path: str = "/predict") -> None:
        self.app = app
        self.state = owner.state  # where the lifespan puts the DataPlane
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        plane: DataPlane | None = getattr(self.state, "plane", None)
        if plane is None:
            await respond(send, 503, orjson.dumps({"detail": "model not loaded yet"}))
            return
        try:
            answer = await plane.serve(rest.CODEC, body_reader(scope, receive, plane.limits))
        except ServiceError as exc:
            status, detail, headers = rest.error_response(exc)
            await respond(send, status, orjson.dumps(detail), headers)
            return
        await respond(send, 200, answer)
