"""The uvicorn protocol the service runs (service.server.protocol): each answer leaves in one write."""

import asyncio
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.server import protocol
from service.server.protocol import CorkedTransport, GuardedHttpToolsProtocol


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class FakeCycle:
    response_started = False
    more_body = False  # the request's body all read
    keep_alive = True


def test_an_answer_goes_out_in_one_write() -> None:
    raw, cycle = FakeTransport(), FakeCycle()
    corked = CorkedTransport(raw, cycle)  # type: ignore[arg-type]
    corked.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the answer starts: at once
    assert raw.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    cycle.response_started = True
    corked.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert len(raw.writes) == 1  # the head waits for the body
    corked.write(b"{}")
    assert raw.writes[1:] == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    corked.write(b"more")  # anything later goes straight out
    assert raw.writes[2:] == [b"more"] and not corked.is_closing()


@pytest.mark.parametrize("end", ["flush", "close"])
def test_a_held_head_is_never_lost(end: str) -> None:
    raw, cycle = FakeTransport(), FakeCycle()
    corked = CorkedTransport(raw, cycle)  # type: ignore[arg-type]
    cycle.response_started = True
    corked.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")  # a HEAD answer: no body follows
    getattr(corked, end)()
    assert raw.writes == [b"HTTP/1.1 405 Method Not Allowed\r\n\r\n"] and raw.closed == (end == "close")


def test_a_large_body_is_not_copied_onto_its_head() -> None:
    raw, cycle = FakeTransport(), FakeCycle()
    corked = CorkedTransport(raw, cycle)  # type: ignore[arg-type]
    cycle.response_started = True
    corked.write(b"HEAD")
    big = b"x" * (protocol.CORK_MAX_BYTES + 1)
    corked.writelines([big])
    assert raw.writes == [b"HEAD", big]


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n", 1),  # head and body together
        (b"HEAD /small HTTP/1.1\r\nHost: t\r\n\r\n", 1),  # the head alone, when the answer completes
        (b"GET /large HTTP/1.1\r\nHost: t\r\n\r\n", 2),  # a large body after its head
    ],
    ids=["get", "head", "large"],
)
def test_the_server_protocol_sends_each_answer_in_as_few_writes(request_bytes: bytes, expected: int) -> None:
    """uvicorn's own cycle, driven through the service's protocol: what reaches the socket, write by write."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = b"{}" if scope["path"] == "/small" else b"x" * (protocol.CORK_MAX_BYTES + 1)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def run() -> list[bytes]:
        config = Config(app, http=GuardedHttpToolsProtocol, lifespan="off", log_level="warning")
        config.load()
        proto = GuardedHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
        raw = FakeTransport()
        proto.connection_made(raw)  # type: ignore[arg-type]
        proto.data_received(request_bytes)
        for _ in range(50):
            await asyncio.sleep(0.01)
            if proto.cycle is not None and proto.cycle.response_complete:
                break
        proto.connection_lost(None)
        return raw.writes

    writes = asyncio.run(run())
    assert len(writes) == expected
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\n\r\n" in writes[0]
    if request_bytes.startswith(b"GET /small"):
        assert writes[0].endswith(b"\r\n\r\n{}")


def test_an_answer_before_the_whole_body_closes_the_connection() -> None:
    raw, cycle = FakeTransport(), FakeCycle()
    cycle.more_body = True  # a 413 (or 401, 404) sent while the body still streams in
    corked = CorkedTransport(raw, cycle)  # type: ignore[arg-type]
    cycle.response_started = True
    corked.write(b"HTTP/1.1 413 Request Entity Too Large\r\ncontent-length: 2\r\n\r\n")
    corked.write(b"{}")
    assert raw.writes == [b"HTTP/1.1 413 Request Entity Too Large\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"]
    assert cycle.keep_alive is False  # uvicorn closes the connection once the answer is out


def test_lone_request_sees_the_other_requests_of_its_server() -> None:
    """Requests read in one poll all have their tasks before the first runs: each sees the others (and takes a
    turn of the loop for them, to be batched together). A request alone on its server, sees none."""
    seen: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(protocol.lone_request())
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    request = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"

    async def run(connections: int) -> None:
        config = Config(app, http=GuardedHttpToolsProtocol, lifespan="off", log_level="warning")
        config.load()
        state, loop = ServerState(), asyncio.get_running_loop()
        protocols = [GuardedHttpToolsProtocol(config, state, {}, loop) for _ in range(connections)]
        for proto in protocols:
            proto.connection_made(FakeTransport())  # type: ignore[arg-type]
        for proto in protocols:  # as one poll would: every connection's data, then the tasks run
            proto.data_received(request)
        while state.tasks:
            await asyncio.sleep(0.01)
        idle = GuardedHttpToolsProtocol(config, state, {}, loop)  # an idle keep-alive connection changes nothing
        idle.connection_made(FakeTransport())  # type: ignore[arg-type]
        protocols[0].data_received(request)
        while state.tasks:
            await asyncio.sleep(0.01)
        for proto in [*protocols, idle]:
            proto.connection_lost(None)

    asyncio.run(run(3))
    assert seen == [False, False, False, True]
    seen.clear()
    asyncio.run(run(1))
    assert seen == [True, True]


def test_two_servers_on_one_loop_count_no_request_as_alone() -> None:
    """Which server a request came from is unknown there, so none skips the turn (tests only: a worker runs one)."""

    async def run() -> bool:
        config = Config(lambda *_: None, http=GuardedHttpToolsProtocol, lifespan="off", log_level="warning")
        config.load()
        loop = asyncio.get_running_loop()
        for state in (ServerState(), ServerState()):
            GuardedHttpToolsProtocol(config, state, {}, loop)
            state.tasks.add(asyncio.ensure_future(asyncio.sleep(0)))  # one request in progress on each
        return protocol.lone_request()

    assert asyncio.run(run()) is False
