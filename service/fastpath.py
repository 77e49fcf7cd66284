"""ASGI middleware that serves ``POST /predict`` without FastAPI's per-request machinery.

Routing, dependency injection and response objects cost more than the model for a
small streaming chunk. This answers the one hot route straight from the ASGI
messages, with the same pipeline (``Predictor``), limits and error bodies as the
documented FastAPI route; every other request passes through untouched.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import SERVICE_ERRORS, PayloadTooLarge, error_body
from .predictor import Predictor

JSON = (b"content-type", b"application/json")


class PredictFastPath:
    def __init__(self, app: ASGIApp, path: str = "/predict") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        predictor: Predictor | None = getattr(scope["app"].state, "predictor", None)
        if predictor is None:
            await _respond(send, 503, orjson.dumps({"detail": "model not loaded yet"}))
            return
        try:
            body = await read_body(scope, receive, predictor.limits.max_body_bytes)
            if body is None:  # the client left before sending it all: nobody to answer
                return
            answer = await predictor(body)
        except SERVICE_ERRORS as exc:
            status, detail, headers = error_body(exc)
            await _respond(send, status, orjson.dumps(detail), headers)
            return
        await _respond(send, 200, answer)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The body, refused as soon as it is known to exceed ``limit`` (from Content-Length or while streaming)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(int(value), limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(None, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
    headers = [JSON, (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
