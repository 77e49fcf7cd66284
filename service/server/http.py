"""HTTP plumbing shared by the protocols: reading a body within its limits, and sending an answer from ASGI."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.types import Receive, Scope, Send

from ..pipeline.errors import BodyTimeout, ClientDisconnected, PayloadTooLarge
from ..pipeline.rules import Limits

JSON = b"application/json"
BINARY = b"application/octet-stream"


def body_reader(scope: Scope, receive: Receive, limits: Limits) -> Callable[[], Awaitable[bytes]]:
    """What a route hands the DataPlane to read its body, within the limits."""
    return lambda: read_body(scope, receive, limits.max_body_bytes, limits.body_timeout_s)


async def read_body(scope: Scope, receive: Receive, limit: int, timeout_s: float) -> bytes:
    """The body, refused as soon as it is known to exceed ``limit`` (from Content-Length or while it
    streams in), or not all there within ``timeout_s``. The chunks land in one growing buffer: a large
    body is held about once, not as chunks and their join."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(int(value), limit)
    body = bytearray()  # grows with what arrives: a declared length reserves nothing
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected("the client left before sending the whole body")
                chunk: bytes = message.get("body", b"")
                if len(body) + len(chunk) > limit:
                    raise PayloadTooLarge(None, limit)
                if not body and not message.get("more_body", False):
                    return chunk  # the whole body in one message: no copy
                body += chunk
                if not message.get("more_body", False):
                    return body  # type: ignore[return-value]  # bytes-like; every reader takes it
    except TimeoutError:
        raise BodyTimeout(f"The body did not arrive within {timeout_s:g} s") from None


async def respond(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None, content_type: bytes = JSON
) -> None:
    raw = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
