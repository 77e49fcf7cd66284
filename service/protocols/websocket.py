"""WebSocket streaming: ``/v1/models/{name}/stream``. The connection holds the LSTM states of one or
more streams, so a client sends only each next chunk.

Messages are JSON text, one request and one answer each:

- ``{"stream": "a", "inputs": [[...F values...], ...]}`` runs the chunk from stream ``a``'s
  states (zeros for a new stream, or ``h0``/``c0`` [layers][hidden] if the message gives them)
  and answers ``{"stream": "a", "outputs": [[...], ...], "steps": <steps so far>}``.
- ``"forecast": {"horizon", "quantiles"}`` and ``"explain": true`` on a chunk add its forecast ahead of its
  last step (``"forecast": {"mean", "quantiles"}``) and its gates and states (``"explanation"``), as on
  ``/predict``.
- ``{"stream": "a", "reset": true}`` forgets the stream: ``{"stream": "a", "reset": true}``.
- ``{"stream": "a", "state": true}`` answers its states: ``{"stream": "a", "hn": ..., "cn": ...}``.

The handshake may offer the subprotocol ``lstm`` (chosen when offered) and, for a browser, which cannot set
headers, the API key as ``lstm.bearer.<base64url key>`` (``server.middleware``).

Every message goes through the ``DataPlane`` (validation, limits, admission, deadline, batching)
with this codec. Errors close the connection, each with its code and a reason naming the field:
1007 bad input, 1003 a binary frame, 1009 a message over the body limit, 1008 too many streams
or an unknown model, 1013 a full worker (too many connections or requests) or a request past its
deadline, 1000 after ``LSTM_STREAM_IDLE_S`` without a message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from starlette.types import Message as AsgiMessage
from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import metrics, tracing
from ..model.batch import Batch
from ..model.contract import ModelSpec
from ..pipeline import forecast, jsondata, rules, sequences
from ..pipeline.dataplane import Call, DataPlane, Outcome
from ..pipeline.errors import (
    BodyTimeout,
    ChunkOutOfOrder,
    ClientDisconnected,
    ControlIncomplete,
    DeadlineExceeded,
    InvalidInput,
    LoadFailed,
    ModelControlOff,
    ModelInUse,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    SequenceBusy,
    SequencesFull,
    ServiceError,
    StoreDown,
    TooManySequences,
    UnknownModel,
    error,
)
from ..pipeline.rules import Limits
from ..server.middleware import STREAM_SUBPROTOCOL

log = logging.getLogger("service.access")
INVALID, UNSUPPORTED, POLICY, TOO_BIG, TRY_LATER, NORMAL = 1007, 1003, 1008, 1009, 1013, 1000
RESTART = 1012  # the connection's model version stopped serving: reconnect to go on with the one now serving
FIELDS = ("stream", "inputs", "h0", "c0", "reset", "state", "sequence", "forecast", "explain")
PLACES = rules.Places(x=("inputs",), h0=("h0",), c0=("c0",), explain=("explain",))
CLOSE_CODES: dict[type[ServiceError], int] = {
    InvalidInput: INVALID,
    PayloadTooLarge: TOO_BIG,
    Overloaded: TRY_LATER,
    NotReady: TRY_LATER,
    StoreDown: TRY_LATER,
    SequencesFull: TRY_LATER,
    SequenceBusy: TRY_LATER,
    ChunkOutOfOrder: INVALID,
    DeadlineExceeded: TRY_LATER,
    UnknownModel: POLICY,
    TooManySequences: POLICY,
    BodyTimeout: POLICY,
    ClientDisconnected: NORMAL,
    # model control's own (HTTP routes only): mapped all the same, so that no error is left without a close
    ModelControlOff: POLICY,
    LoadFailed: POLICY,
    ModelInUse: POLICY,
    ControlIncomplete: TRY_LATER,
}


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
        self.code, self.reason = code, _clip(reason)


def _clip(reason: str) -> str:
    """A close reason holds at most 123 bytes of UTF-8."""
    return reason.encode("utf-8", "backslashreplace")[:120].decode(errors="ignore")


def close_for(exc: ServiceError) -> CloseWith:
    """The WebSocket protocol's one mapping of the pipeline's errors."""
    text = exc.lines() if isinstance(exc, InvalidInput) else str(exc)
    return CloseWith(CLOSE_CODES[type(exc)], text)


@dataclass
class Message:
    stream: str
    action: str  # "run", "reset", "state", or "sequence" (a server-held sequence's chunk)
    fresh: bool = False  # the run starts the stream afresh (new, or from given states)
    asked: forecast.Ask | None = None  # its forecast ahead, when the message asks


class StreamCodec:
    """One connection's streams; a message in, its answer out."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.streams: dict[str, StreamState] = {}

    def decode(self, body: bytes, spec: ModelSpec, limits: Limits) -> Call[Message]:
        return jsondata.decode(body, lambda reader: self._read(reader, spec, limits), loc=())

    def _read(self, reader: jsondata.Reader, spec: ModelSpec, limits: Limits) -> Call[Message]:
        msg = reader.document
        if not jsondata.is_object(msg):
            raise InvalidInput([error((), "A message should be a JSON object", "model_attributes_type")])
        keys = jsondata.keys(msg)
        extra = [k for k in keys if k not in FIELDS][: rules.MAX_ERRORS]
        errors = [error((jsondata.key_name(k),), "Extra inputs are not permitted", "extra_forbidden") for k in extra]
        name = msg["stream"] if "stream" in keys else "0"
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            errors.append(error(("stream",), "Input should be a string of 1 to 64 characters", "string_type"))
        flags = {k: msg[k] for k in ("reset", "state", "explain") if k in keys}
        not_bool = (k for k, v in flags.items() if not isinstance(v, bool))
        errors += [error((k,), "Input should be a valid boolean", "bool_type") for k in not_bool]
        if errors:
            raise InvalidInput(errors)
        if "sequence" in keys and (flags.get("reset") is True or flags.get("state") is True):
            msg = "reset and state act on the connection's streams; a server-held sequence ends with end"
            raise InvalidInput([error(("sequence",), msg, "sequence_flags")])
        if flags.get("reset") is True or flags.get("state") is True:
            if flags.get("state") is True and name not in self.streams:
                raise InvalidInput([error(("stream",), f"no stream {name!r} on this connection", "unknown_stream")])
            no_work = Batch([], *spec.zero_states(0))
            return Call(no_work, context=Message(name, "reset" if flags.get("reset") is True else "state"))
        if "inputs" not in keys:
            raise InvalidInput([error(("inputs",), "Field required", "missing")])
        explain = flags.get("explain") is True
        asked = None
        if "forecast" in keys and msg["forecast"] is not None:
            asked = forecast.option(reader.plain(msg["forecast"]), spec, ("forecast",))
        x = reader.array(msg["inputs"], PLACES.x, rules.sequence_dims(spec, limits)[1:])
        given = {
            k: np.ascontiguousarray(reader.array(msg[k], (k,), rules.state_dims(spec))[:, None, :])
            for k in ("h0", "c0")
            if k in keys and msg[k] is not None
        }
        if "sequence" in keys and msg["sequence"] is not None:
            # A server-held sequence: the store keeps its states, not this connection, so any connection (after a
            # disconnect, or a restart) resumes it.
            ref = sequences.read_ref(reader, msg["sequence"], ("sequence",))
            batch = rules.batch([x], given.get("h0"), given.get("c0"), spec, limits, PLACES, explain)  # none: zeros
            rules.sequence_batch(batch, ref, bool(given), PLACES)
            fits = None if asked is None else asked.fits
            return Call(batch, explain, PLACES.explain, Message(name, "sequence", asked=asked), ref, fits)
        if name not in self.streams and len(self.streams) >= self.max_streams:
            raise TooManySequences(f"at most {self.max_streams} streams per connection")
        state = self.streams.get(name)
        fresh = bool(given) or state is None
        if given:
            h0, c0 = given.get("h0"), given.get("c0")
        elif state is None:
            h0, c0 = spec.zero_states(1)
        else:
            h0, c0 = state.h, state.c
        batch = rules.batch([x], h0, c0, spec, limits, PLACES, explain)
        return Call(batch, explain, PLACES.explain, Message(name, "run", fresh, asked))

    def encode(self, call: Call[Message], outcome: Outcome, spec: ModelSpec) -> bytes:
        assert call.context is not None
        name, action = call.context.stream, call.context.action
        if action == "reset":
            self.streams.pop(name, None)
            return orjson.dumps({"stream": name, "reset": True})
        if action == "state":
            s = self.streams[name]
            return orjson.dumps({"stream": name, "hn": s.h[:, 0], "cn": s.c[:, 0]}, option=orjson.OPT_SERIALIZE_NUMPY)
        result = outcome.results[0]
        answer: dict[str, Any]
        if action == "sequence":
            assert call.sequence is not None
            answer = {"stream": name, "sequence": call.sequence.id, "outputs": result.outputs}
            if call.sequence.chunk is not None:
                answer["chunk"] = call.sequence.chunk
        else:
            previous = self.streams.get(name)
            steps = (0 if call.context.fresh or previous is None else previous.steps) + call.batch.steps
            self.streams[name] = StreamState(result.hn[:, None, :], result.cn[:, None, :], steps)
            answer = {"stream": name, "outputs": result.outputs, "steps": steps}
        if call.context.asked is not None:
            answer["forecast"] = forecast.answer(result, spec, call.context.asked)
        if outcome.explanations is not None:
            answer["explanation"] = outcome.explanations[0]
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


MESSAGE_SPAN = "WS /v1/models/{name}/stream message"  # each message's server span (service.tracing)


async def accept(ws: WebSocket) -> None:
    """Complete the handshake, with the subprotocol a browser offers (``STREAM_SUBPROTOCOL``) if it offers it."""
    offered = STREAM_SUBPROTOCOL in ws.scope.get("subprotocols", ())
    await ws.accept(subprotocol=STREAM_SUBPROTOCOL if offered else None)


async def refuse(ws: WebSocket, code: int, reason: str) -> None:
    """Close a connection the server will not serve, after the handshake, so the client sees the code
    (a close before it reads as HTTP 403)."""
    await accept(ws)
    await ws.close(code, _clip(reason))


async def next_message(ws: WebSocket, idle_s: float) -> AsgiMessage:
    """The stream's next message, or TimeoutError once ``idle_s`` passed without one. A message that came by
    the deadline while the event loop was busy elsewhere is read, not lost: the deadline can fire before the
    waiting reader runs, so a wait that timed out looks once more, without waiting (``timeout(0)`` cancels
    only a read that would wait). Not ``asyncio.wait_for``: before Python 3.12 it starts a task per call."""
    try:
        async with asyncio.timeout(idle_s):
            return await ws.receive()
    except TimeoutError:
        async with asyncio.timeout(0):
            return await ws.receive()


async def serve_stream(
    ws: WebSocket, plane: DataPlane, connections: Connections, max_streams: int, idle_s: float
) -> None:
    if connections.open >= connections.limit:
        metrics.STREAM_CLOSES.labels(str(TRY_LATER)).inc()
        await refuse(ws, TRY_LATER, f"at most {connections.limit} stream connections; retry later")
        return
    connections.open += 1
    start, answered, code = time.perf_counter(), 0, NORMAL  # a client's own close counts as normal
    try:
        await accept(ws)
        codec = StreamCodec(max_streams)
        limit = plane.limits.max_body_bytes
        while True:
            try:
                message = await next_message(ws, idle_s)
            except TimeoutError:
                raise CloseWith(NORMAL, f"idle for {idle_s:g} s") from None
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is None:
                raise CloseWith(UNSUPPORTED, "messages are JSON text, not binary")
            text: str = message["text"]

            async def read(text: str = text) -> bytes:
                body = text.encode()
                if len(body) > limit:
                    raise PayloadTooLarge(len(body), limit)
                return body

            if plane.retired:
                # Its streams' states are that version's: they do not go on with another's weights.
                spec = plane.engine.spec
                raise CloseWith(RESTART, f"version {spec.version} of model {spec.name} stopped serving; reconnect")
            with tracing.server_span(MESSAGE_SPAN, **{"url.path": ws.scope["path"]}) as top:
                try:
                    answer = await plane.serve(codec, read)
                except ServiceError as e:
                    tracing.record_status(top, e.status)
                    raise close_for(e) from None
                except Exception:
                    tracing.record_status(top, 500)
                    raise
                tracing.record_status(top, 200)
            await ws.send_text(answer.decode())
            answered += 1
            metrics.STREAM_MESSAGES.inc()
    except CloseWith as c:
        code = c.code
        await ws.close(c.code, c.reason)
    except WebSocketDisconnect:
        pass
    finally:
        connections.open -= 1
        metrics.STREAM_CLOSES.labels(str(code)).inc()
        log.info(
            "stream",
            extra={
                "path": ws.scope["path"],
                "messages": answered,
                "close_code": code,
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                "client": (ws.scope.get("client") or ("", 0))[0],
            },
        )
