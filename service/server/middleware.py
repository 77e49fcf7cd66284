"""Pure ASGI middleware of the edge (``service.app.ServiceApp``), in front of FastAPI and the fast path.

``RequestContext`` (outermost): a request id (the client's ``X-Request-ID`` when it is a sane
token, else a new one), echoed on the answer; one structured log line per request with status
and duration, never the input data; request metrics.
``ApiKeyAuth``: with API keys configured, ``Authorization: Bearer <key>`` (or, on a WebSocket handshake,
the subprotocol ``KEY_SUBPROTOCOL``) on every route but the open ones (health, metrics, and the page's
files while it is on), compared in constant time; 401 otherwise, the same for every failure.
"""

from __future__ import annotations

import base64
import hmac
import itertools
import logging
import os
import re
import time

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import metrics
from .logs import AccessLog

log = logging.getLogger("service.access")
access = AccessLog(log)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
CLIENT_LEFT = "lstm.client_left"  # in scope["state"], set by the server: true once the client left unanswered
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before its answer
OPEN_ROUTES = frozenset({"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics"})
# A browser cannot set a WebSocket's headers: it offers these subprotocols instead, the key base64url-encoded in
# the second (``new WebSocket(url, ["lstm", "lstm.bearer." + key])``); the server accepts the first.
STREAM_SUBPROTOCOL = "lstm"
KEY_SUBPROTOCOL = "lstm.bearer."


_PREFIX = os.urandom(10).hex()  # per process: ids of different workers never collide
_COUNTER = itertools.count()


def final_status(scope: Scope, status: int) -> int:
    """The status a request ends with: the one sent, or 499 if the client left before its answer reached it."""
    client_left = scope["state"].get(CLIENT_LEFT)
    return CLIENT_CLOSED_REQUEST if client_left is not None and client_left() else status


def new_request_id() -> str:
    """32 hex digits, unique per process and across processes; no system call (os.urandom each time
    measured 165 us here, more than the model takes for a small request)."""
    return f"{_PREFIX}{next(_COUNTER) & 0xFFFFFFFFFFFF:012x}"


class RequestContext:
    def __init__(self, app: ASGIApp, metrics_on: bool = True) -> None:
        self.app = app
        self.metrics_on = metrics_on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        echoed = (b"x-request-id", request_id.encode())
        status = 500  # unless the app answers otherwise

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echoed]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = metrics.route_label(scope["path"])  # bounded: a label, never the client's path
            status = final_status(scope, status)  # whatever was sent, nobody received it if the client left
            if self.metrics_on:
                metrics.answered(route, status, elapsed)
            access(
                request_id=request_id,
                method=scope["method"],
                path=route,
                status=status,
                duration_ms=round(elapsed * 1000, 3),
                client=(scope.get("client") or ("", 0))[0],
            )


def authorized(header: str, keys: list[bytes]) -> bool:
    """Whether an ``Authorization`` value (HTTP header, gRPC metadata) is ``Bearer <one of the keys>``."""
    scheme, _, token = header.partition(" ")
    candidate = token.strip().encode()
    # Compare with every key, without stopping early: the time taken says nothing of which keys exist.
    matches = [hmac.compare_digest(candidate, key) for key in keys]
    return scheme.lower() == "bearer" and any(matches)


def _bearer(subprotocol: str) -> str:
    """``lstm.bearer.<base64url key>`` as an ``Authorization`` value ("" if it does not decode)."""
    encoded = subprotocol[len(KEY_SUBPROTOCOL) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return ""
    return f"Bearer {key}"


class ApiKeyAuth:
    def __init__(self, app: ASGIApp, keys: list[str], open_routes: frozenset[str] = OPEN_ROUTES) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.open_routes = open_routes  # served without a key

    def _authorized(self, scope: Scope) -> bool:
        if authorized(Headers(scope=scope).get("authorization", ""), self.keys):
            return True
        offered = [p for p in scope.get("subprotocols", ()) if p.startswith(KEY_SUBPROTOCOL)]
        return scope["type"] == "websocket" and len(offered) == 1 and authorized(_bearer(offered[0]), self.keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.open_routes or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        metrics.REJECTED.labels("unauthorized").inc()
        if scope["type"] == "websocket":  # refused before the handshake completes: the client sees 403
            await send({"type": "websocket.close", "code": 1008})
            return
        body = orjson.dumps({"detail": "Not authenticated"})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b"Bearer"),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
