"""WebSocket streaming: results equal /predict with states passed back; limits and close codes."""

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import uvloop
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.protocols import websocket
from service.settings import Settings

from .conftest import app_client

URL = "/v1/models/tiny/stream"


def test_two_streams_on_one_connection_equal_predict_with_states(client: TestClient, weather: np.ndarray) -> None:
    a, b = weather[0:60], weather[700:745]
    whole_a = client.post("/predict", json={"inputs": [a.tolist()]}).json()
    whole_b = client.post("/predict", json={"inputs": [b.tolist()]}).json()
    got: dict[str, list] = {"a": [], "b": []}
    with client.websocket_connect(URL) as ws:
        for start in range(0, 60, 15):  # interleaved chunks of the two streams
            for name, seq in (("a", a), ("b", b)):
                chunk = seq[start : start + 15]
                if len(chunk) == 0:
                    continue
                ws.send_json({"stream": name, "inputs": chunk.tolist()})
                answer = ws.receive_json()
                assert answer["stream"] == name and answer["steps"] == start + len(chunk)
                got[name] += answer["outputs"]
        ws.send_json({"stream": "a", "state": True})
        state_a = ws.receive_json()
    np.testing.assert_allclose(got["a"], whole_a["outputs"][0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["b"], whole_b["outputs"][0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(state_a["hn"], whole_a["hn"][0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(state_a["cn"], whole_a["cn"][0], rtol=0, atol=1e-5)


def test_reset_and_given_states(client: TestClient, weather: np.ndarray) -> None:
    seq = weather[100:110].tolist()
    first = client.post("/predict", json={"inputs": [seq]}).json()
    with client.websocket_connect(URL) as ws:
        ws.send_json({"stream": "s", "inputs": seq})
        ws.receive_json()
        ws.send_json({"stream": "s", "reset": True})
        assert ws.receive_json() == {"stream": "s", "reset": True}
        ws.send_json({"stream": "s", "inputs": seq})
        np.testing.assert_allclose(ws.receive_json()["outputs"], first["outputs"][0], atol=1e-5)  # from zeros again
        ws.send_json({"stream": "t", "inputs": seq, "h0": first["hn"][0], "c0": first["cn"][0]})
        with_states = ws.receive_json()["outputs"]
    want = client.post("/predict", json={"inputs": [seq], "h0": first["hn"], "c0": first["cn"]}).json()
    np.testing.assert_allclose(with_states, want["outputs"][0], atol=1e-5)


@pytest.mark.parametrize(
    ("message", "code", "says"),
    [
        ({"stream": "s", "inputs": [[1, 2, 3]]}, 1007, "inputs.0"),
        ({"stream": "s", "inputs": []}, 1007, "at least 1 step"),
        ({"stream": "s", "inputs": [[1, 2, 3, 4]], "h0": [[0] * 8] * 2}, 1007, "both or neither"),
        ({"stream": 5, "inputs": [[1, 2, 3, 4]]}, 1007, "stream"),
        ({"stream": "s", "state": True}, 1007, "no stream"),
        ("not json", 1007, "JSON"),
        (b"\x00binary", 1003, "binary"),
    ],
)
def test_bad_input_closes_cleanly_with_a_reason(client: TestClient, message: object, code: int, says: str) -> None:
    with client.websocket_connect(URL) as ws:
        if isinstance(message, bytes):
            ws.send_bytes(message)
        elif isinstance(message, str):
            ws.send_text(message)
        else:
            ws.send_json(message)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == code and says in closed.value.reason
    assert client.get("/health/ready").status_code == 200


def test_limits_streams_connections_and_idleness(settings: Settings) -> None:
    row = [[0.0, 10.0, 5.0, 3.0]]
    with app_client(settings, stream_max_streams=2, stream_max_connections=1, stream_idle_s=0.3) as c:
        with c.websocket_connect(URL) as ws:
            for name in ("a", "b"):
                ws.send_json({"stream": name, "inputs": row})
                ws.receive_json()
            # a second connection while one is open
            with pytest.raises(WebSocketDisconnect), c.websocket_connect(URL) as other:
                other.receive_json()
            ws.send_json({"stream": "c", "inputs": row})
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1008 and "at most 2 streams" in closed.value.reason
        with c.websocket_connect(URL) as ws:  # the slot is free again; idle past 0.3 s: closed
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1000 and "idle" in closed.value.reason


def test_unknown_model_and_api_keys(settings: Settings) -> None:
    auth = {"Authorization": "Bearer k1"}
    with app_client(settings, api_keys=["k1"]) as c:
        with pytest.raises(WebSocketDisconnect), c.websocket_connect(URL) as ws:
            ws.receive_json()
        with c.websocket_connect(URL, headers={"Authorization": "Bearer k1"}) as ws:
            ws.send_json({"inputs": [[0.0, 10.0, 5.0, 3.0]]})
            assert len(ws.receive_json()["outputs"]) == 1
        nope = "/v1/models/nope/stream"
        with pytest.raises(WebSocketDisconnect) as closed, c.websocket_connect(nope, headers=auth) as ws:
            ws.receive_json()
        assert closed.value.code == 1008


@pytest.mark.parametrize("loop_factory", [uvloop.new_event_loop, asyncio.new_event_loop], ids=["uvloop", "asyncio"])
def test_a_message_that_came_by_the_idle_deadline_is_read_not_closed_as_idle(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """The loop is busy (other requests) past the deadline while the message arrives: the socket's reader
    queues it in the same turn as the deadline fires, before the stream's reader runs. It is still the
    stream's next message, not an idle close (``asyncio.timeout`` alone would lose it; ``wait_for`` did not)."""

    async def main() -> tuple[Any, float]:
        queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()  # what uvicorn's WebSocket protocol reads from
        ws = SimpleNamespace(receive=queue.get)
        loop = asyncio.get_running_loop()

        def busy_while_it_arrives() -> None:
            time.sleep(0.15)  # past the deadline; the message came meanwhile: its I/O callback runs next turn
            loop.call_soon(queue.put_nowait, {"type": "websocket.receive", "text": "chunk"})

        loop.call_later(0.02, busy_while_it_arrives)
        message = await websocket.next_message(ws, 0.1)  # type: ignore[arg-type]
        start = time.perf_counter()
        with pytest.raises(TimeoutError):  # and with nothing sent, the wait ends at the deadline
            await websocket.next_message(ws, 0.05)  # type: ignore[arg-type]
        return message, time.perf_counter() - start

    loop = loop_factory()
    try:
        message, idle = loop.run_until_complete(main())
    finally:
        loop.close()
    assert message == {"type": "websocket.receive", "text": "chunk"}
    assert 0.05 <= idle < 1.0
