"""WebSocket streaming: ``/v1/models/{name}/stream``. The connection holds the LSTM states of
one or more streams, so a client sends only each next chunk.

Messages are JSON text, one request and one answer each:

- ``{"stream": "a", "inputs": [[...F values...], ...]}`` runs the chunk from stream ``a``'s
  states (zeros for a new stream, or ``h0``/``c0`` [layers][hidden] if the message gives them)
  and answers ``{"stream": "a", "outputs": [[...], ...], "steps": <steps so far>}``.
- ``{"stream": "a", "reset": true}`` forgets the stream: ``{"stream": "a", "reset": true}``.
- ``{"stream": "a", "state": true}`` answers its states: ``{"stream": "a", "hn": ..., "cn": ...}``.

The same validation, limits, admission and batching as ``/predict``. Bad input closes the
connection with 1007 and a reason naming the field; a binary frame with 1003; a message over
the body limit with 1009; too many streams with 1008; a full server with 1013; idleness with
1000 after ``LSTM_STREAM_IDLE_S``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from .engine import Batch
from .errors import SERVICE_ERRORS, InvalidInput, Overloaded
from .payload import Dim, load_json, to_array
from .predictor import Predictor

INVALID, UNSUPPORTED, POLICY, TOO_BIG, TRY_LATER, NORMAL = 1007, 1003, 1008, 1009, 1013, 1000


@dataclass
class StreamState:
    h: np.ndarray  # [L, 1, H]
    c: np.ndarray
    steps: int = 0


@dataclass
class Connections:
    """Open stream connections of this worker, against LSTM_STREAM_MAX_CONNECTIONS."""

    limit: int
    open: int = 0


class CloseWith(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason[:120]  # a close reason holds at most 123 bytes


def _reason(exc: InvalidInput) -> str:
    first = exc.errors[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


class StreamSession:
    def __init__(self, predictor: Predictor, max_streams: int) -> None:
        self.predictor = predictor
        self.max_streams = max_streams
        self.streams: dict[str, StreamState] = {}

    def _state(self, name: str, msg: dict[str, Any]) -> StreamState:
        spec = self.predictor.engine.spec
        dims = [Dim("layer", spec.num_layers, spec.num_layers), Dim("unit", spec.hidden_size, spec.hidden_size)]
        if ("h0" in msg) != ("c0" in msg):
            raise CloseWith(INVALID, "h0 and c0 go together: give both or neither")
        if "h0" in msg:
            h = to_array(msg["h0"], ("h0",), dims)[:, None, :]
            c = to_array(msg["c0"], ("c0",), dims)[:, None, :]
            self.streams[name] = StreamState(np.ascontiguousarray(h), np.ascontiguousarray(c))
        elif name not in self.streams:
            if len(self.streams) >= self.max_streams:
                raise CloseWith(POLICY, f"at most {self.max_streams} streams per connection")
            zeros = np.zeros((spec.num_layers, 1, spec.hidden_size), dtype=np.float32)
            self.streams[name] = StreamState(zeros, zeros)
        return self.streams[name]

    async def handle(self, raw: str) -> bytes:
        try:
            msg = load_json(raw.encode())
        except InvalidInput as e:
            raise CloseWith(INVALID, _reason(e)) from None
        if not isinstance(msg, dict):
            raise CloseWith(INVALID, "a message must be a JSON object")
        name = msg.get("stream", "0")
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise CloseWith(INVALID, "stream: a string of 1 to 64 characters")
        if msg.get("reset") is True:
            self.streams.pop(name, None)
            return orjson.dumps({"stream": name, "reset": True})
        if msg.get("state") is True:
            if name not in self.streams:
                raise CloseWith(INVALID, f"stream: no stream {name!r} on this connection")
            s = self.streams[name]
            return orjson.dumps({"stream": name, "hn": s.h[:, 0], "cn": s.c[:, 0]}, option=orjson.OPT_SERIALIZE_NUMPY)
        spec, limits = self.predictor.engine.spec, self.predictor.limits
        dims = [Dim("step", 1, limits.max_steps), Dim("value", spec.input_size, spec.input_size, spec.feature_names)]
        try:
            x = to_array(msg.get("inputs"), ("inputs",), dims)
            state = self._state(name, msg)
        except InvalidInput as e:
            raise CloseWith(INVALID, _reason(e)) from None
        batch = Batch(x[None], state.h, state.c, np.array([len(x)], dtype=np.int32))
        result = (await self.predictor.run(batch))[0]
        state.h, state.c = result.hn[:, None, :], result.cn[:, None, :]
        state.steps += len(x)
        answer = {"stream": name, "outputs": result.outputs, "steps": state.steps}
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


async def serve_stream(
    ws: WebSocket, predictor: Predictor, connections: Connections, max_streams: int, idle_s: float
) -> None:
    if connections.open >= connections.limit:
        await ws.close(TRY_LATER, f"at most {connections.limit} stream connections; retry later")
        return
    connections.open += 1
    await ws.accept()
    session = StreamSession(predictor, max_streams)
    try:
        while True:
            try:
                message = await asyncio.wait_for(ws.receive(), timeout=idle_s)
            except TimeoutError:
                raise CloseWith(NORMAL, f"idle for {idle_s:g} s") from None
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is None:
                raise CloseWith(UNSUPPORTED, "messages are JSON text, not binary")
            if len(message["text"]) > predictor.limits.max_body_bytes:
                raise CloseWith(TOO_BIG, f"a message may hold at most {predictor.limits.max_body_bytes} bytes")
            try:
                answer = await session.handle(message["text"])
            except Overloaded as e:
                raise CloseWith(TRY_LATER, str(e)) from None
            except SERVICE_ERRORS as e:
                raise CloseWith(INVALID if isinstance(e, InvalidInput) else POLICY, str(e)) from None
            await ws.send_text(answer.decode())
    except CloseWith as c:
        await ws.close(c.code, c.reason)
    except WebSocketDisconnect:
        pass
    finally:
        connections.open -= 1
