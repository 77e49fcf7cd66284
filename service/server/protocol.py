"""The uvicorn protocol the service runs: httptools, with bounds on slow and oversized request headers, and
each answer's head and body in one write.

uvicorn bounds idle keep-alive connections and, with ``limit_concurrency``, open connections, but
not how long a client may take to send its headers, nor (with httptools) how large they may be:
``GuardedHttpToolsProtocol`` adds both (408 and 431, then the connection is closed). It builds on
uvicorn's ``RequestResponseCycle`` (its ``transport``, ``on_response`` and ``response_started``), which
is why ``pyproject.toml`` bounds uvicorn's version. ``lone_request`` tells the request path whether a request
is the only one its server has in progress (from uvicorn's set of request tasks).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from .. import metrics
from ..settings import get_settings
from .middleware import CLIENT_LEFT

CORK_MAX_BYTES = 64 * 1024  # a larger body goes out after the head, not copied onto it
MAX_PIPELINED = 32  # requests queued behind the one in progress on a connection; beyond, it is closed
# Each event loop's uvicorn server state (its open connections, its requests' tasks); None where two servers share
# one loop, which no worker does (tests might): then no request counts as alone.
_servers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ServerState | None] = weakref.WeakKeyDictionary()


def lone_request() -> bool:
    """Whether the server running on this event loop has one request in progress: the caller's. Every HTTP
    request has its task from when its headers are read, pipelined ones from when the one before is answered,
    and a WebSocket connection one task for all its messages; so then no other request is on its way in."""
    state = _servers.get(asyncio.get_running_loop())
    return state is not None and len(state.tasks) == 1


class CorkedTransport:
    """The connection's transport as one request's answer sees it: uvicorn writes the status line and
    headers, then the body, as two writes (two system calls, two packets, two wake-ups of the client);
    this holds the first until the second, and sends both in one. Whatever is held goes out when the
    answer completes or the connection closes (a HEAD answer has no body to wait for)."""

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self.transport = transport
        self.cycle = cycle
        self.held: bytes | None = None
        self.started = False

    def write(self, data: bytes) -> None:
        if self.held is not None:
            if len(data) <= CORK_MAX_BYTES:
                data, self.held = self.held + data, None
            else:
                self.flush()
        elif not self.started and self.cycle.response_started:  # the status line and headers
            self.started = True
            if self.cycle.more_body and self.cycle.keep_alive:
                # Answered before the whole body came (413, 401, 404...): what is left of it would be read as
                # the next request. Say so, and close once this answer is out.
                self.cycle.keep_alive = False
                data = data[:-2] + b"connection: close\r\n\r\n"
            self.held = data
            return
        self.transport.write(data)

    def writelines(self, parts: Iterable[bytes]) -> None:
        self.write(b"".join(parts))

    def flush(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def completed(self, then: Callable[[], None]) -> Callable[[], None]:
        """``then``, once what is held has gone out."""

        def done() -> None:
            self.flush()
            then()

        return done

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline and a size cap on each request's headers (refused in
    order, after the requests pipelined before), a cap on pipelined requests, and answers in one write. It
    makes its server's requests known to ``lone_request``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if _servers.setdefault(self.loop, self.server_state) is not self.server_state:
            _servers[self.loop] = None  # another server on this loop: which one a request came from is unknown
        s = get_settings()
        self.header_timeout_s = s.header_timeout_s
        self.max_header_bytes = s.max_header_bytes
        self.header_bytes = 0
        self.header_timer: asyncio.TimerHandle | None = None
        self.refusal: tuple[int, bytes, str] | None = None  # to send once the requests before are answered

    def _arm(self) -> None:
        if self.header_timer is None:
            self.header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _refuse(self, status: int, reason: bytes, msg: str) -> None:
        self._disarm()
        metrics.REJECTED.labels("slow_headers" if status == 408 else "large_headers").inc()
        body = msg.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self.transport.close()

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm()  # a pipelined request waits for the one in progress, not for its client
            return
        self._refuse(408, b"Request Timeout", f"Request headers not received within {self.header_timeout_s:g} s")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.header_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self.header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.max_header_bytes:
            if self.refusal is None and not self.transport.is_closing():
                self.refusal = (431, b"Request Header Fields Too Large", f"Headers over {self.max_header_bytes} bytes")
                self._refuse_when_answered()
            return
        super().on_header(name, value)

    def _busy(self) -> bool:
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _refuse_when_answered(self) -> None:
        """Refuse the request being parsed once the ones before it are answered (a pipelined client reads
        the answers in order: the refusal must not take an earlier request's place)."""
        if self.refusal is None or self.transport.is_closing():
            return
        if self._busy():
            self.flow.pause_reading()
            return
        self._refuse(*self.refusal)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._refuse_when_answered()

    def on_headers_complete(self) -> None:
        self._disarm()
        if self.transport.is_closing() or self.refusal is not None:
            return
        if len(self.pipeline) >= MAX_PIPELINED:  # requests sent far ahead of their answers: a flood, not a client
            metrics.REJECTED.labels("pipelined").inc()
            self.transport.close()
            return
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:
            # Lets the request log tell a client that left before its answer (499) from one served.
            cycle.scope["state"][CLIENT_LEFT] = lambda: cycle.disconnected
            corked = CorkedTransport(self.transport, cycle)
            cycle.transport = corked  # type: ignore[assignment]  # writes, closes, and passes on the rest
            cycle.on_response = corked.completed(cycle.on_response)

    def data_received(self, data: bytes) -> None:
        if not self.transport.is_closing() and self.refusal is None:
            super().data_received(data)

    def on_body(self, body: bytes) -> None:
        if self.cycle is not None and self.refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.cycle is not None and self.refusal is None:
            super().on_message_complete()
            # A large body pauses reading until the app asks for more; with the body all in, read on, so
            # that a client who leaves while the model works is noticed (499) rather than answered.
            self.flow.resume_reading()
