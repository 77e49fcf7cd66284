"""A small client for the LSTM inference service: httpx and numpy (websockets for the WebSocket transport).

    from lstm_client import Client

    with Client("http://127.0.0.1:8000") as client:
        answer = client.predict([rows])               # one sequence: rows is [steps][features]
        with client.stream() as stream:               # a long sequence, chunk by chunk
            for chunk in chunks:
                outputs = stream.send(chunk)          # [steps, outputs]; states carried for you

        seq = client.sequence()                       # the states kept by the server, for any replica
        for chunk in chunks:
            outputs = seq.send(chunk, end=chunk is chunks[-1])  # numbered: a retry is never applied twice

``AsyncClient`` and ``AsyncStream`` do the same with ``await``. ``stream(transport="websocket")``
keeps the states on the server (one connection per stream) instead of sending them each time.
A ``grpc://host:port`` URL (``grpcs://`` with TLS; the ``grpc`` extra) makes every call the Open Inference
Protocol's ``ModelInfer`` over the service's gRPC port; it needs ``model=``.

Inference requests over HTTP (``predict``, and the chunks of ``stream()`` and ``sequence()``) that get no
answer (a refused, broken or timed-out connection), a 502/503/504, or a 409 that says to retry
(``Retry-After``) are sent again, up to ``retries`` times with growing, jittered pauses: each is safe to
repeat (a prediction is a pure function of its inputs and states, and a server-held sequence's chunks are
numbered, so the server answers a repeat without applying it twice). When the retries run out, the last
answer raises ``ServiceError`` (its ``status`` and ``detail``), and the last connection error a
``ServiceError`` whose ``status`` is None (the ``httpx`` error as its cause).
Over gRPC the same calls are retried on UNAVAILABLE and DEADLINE_EXCEEDED, and on ABORTED with
``retry-after``; ``ServiceError.status`` is the HTTP status the code stands for (None when the call never
reached the service), ``ServiceError.code`` the code's name.
Where OpenTelemetry is installed, each call carries the caller's current span (``traceparent``).
WebSocket streams are not retried: a server-held sequence resumes on a new connection by its id.
"""

from __future__ import annotations

__version__ = "0.1.0"

import asyncio
import contextlib
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import numpy as np

ArrayLike = Sequence[Any] | np.ndarray
T = TypeVar("T")


@dataclass
class Forecast:
    mean: np.ndarray  # [horizon, targets]: the forecast of each step ahead of the sequence's last step
    quantiles: dict[str, np.ndarray]  # "0.1" -> [horizon, targets], from the model's calibrated intervals


@dataclass
class Prediction:
    outputs: list[np.ndarray]  # one [steps, outputs] array per sequence
    hn: np.ndarray  # [batch, layers, hidden]: pass back as the next call's h0
    cn: np.ndarray
    model: dict[str, str]
    forecast: list[Forecast] | None = None  # one per sequence, when predict was given a horizon


def _body(
    inputs: Sequence[ArrayLike],
    h0: ArrayLike | None,
    c0: ArrayLike | None,
    sequence: dict[str, Any] | None = None,
    ahead: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``/predict`` body: the sequences, their states, a server-held sequence's chunk, the forecast option."""
    body: dict[str, Any] = {"inputs": [np.asarray(seq, dtype=np.float64).tolist() for seq in inputs]}
    if h0 is not None or c0 is not None:
        body["h0"], body["c0"] = np.asarray(h0).tolist(), np.asarray(c0).tolist()
    if sequence is not None:
        body["sequence"] = sequence
    if ahead is not None:
        body["forecast"] = ahead
    return body


def _prediction(answer: httpx.Response) -> Prediction:
    doc = answer.json()
    ahead = doc.get("forecast")
    return Prediction(
        [np.asarray(o, dtype=np.float32) for o in doc["outputs"]],
        np.asarray(doc["hn"], dtype=np.float32),
        np.asarray(doc["cn"], dtype=np.float32),
        doc["model"],
        None if ahead is None else [_forecast(f) for f in ahead],
    )


def _forecast(doc: dict[str, Any]) -> Forecast:
    quantiles = {q: np.asarray(v, dtype=np.float32) for q, v in doc["quantiles"].items()}
    return Forecast(np.asarray(doc["mean"], dtype=np.float32), quantiles)


def _ahead(horizon: int | None, quantiles: Sequence[float] | None) -> dict[str, Any] | None:
    """``/predict``'s forecast option, or None."""
    if horizon is None:
        if quantiles is not None:
            raise ValueError("quantiles: give a horizon too")
        return None
    return {"horizon": horizon, **({"quantiles": [float(q) for q in quantiles]} if quantiles is not None else {})}


def _predict_path(model: str | None, version: str | None) -> str:
    if model is None:
        return "/predict"
    return f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + "/predict"


def _ws_message(chunk: ArrayLike) -> str:
    import json

    return json.dumps({"stream": "0", "inputs": np.asarray(chunk, dtype=np.float64).tolist()})


def _ws_outputs(raw: str | bytes) -> np.ndarray:
    import json

    return np.asarray(json.loads(raw)["outputs"], dtype=np.float32)


class ServiceError(RuntimeError):
    """What every call to the service raises when it fails: the answer's status and detail, or ``status`` None
    when no answer came (the connection failed, broke or timed out, after the retries). A call this client
    cannot make (a URL that is not HTTP, inputs that are not finite numbers, the WebSocket transport without the
    ``websocket`` extra) raises as Python does, before anything is sent."""

    def __init__(self, status: int | None, detail: str, code: str | None = None) -> None:
        super().__init__(status, detail, code)  # all in args: it pickles and copies (process pools, task queues)
        self.status, self.detail = status, detail
        self.code = code  # over gRPC: the status code's name (INVALID_ARGUMENT...); None over HTTP

    def __str__(self) -> str:
        return f"{self.status}: {self.detail}" if self.status is not None else self.detail


def _answered(answer: httpx.Response) -> httpx.Response:
    if answer.status_code != 200:
        raise ServiceError(answer.status_code, answer.text)
    return answer


RETRY_STATUSES = (502, 503, 504)
MAX_PAUSE_S = 5.0  # the longest wait between two attempts, whatever Retry-After says
# No answer that another attempt may get: the connection failed, broke, or timed out. Not a request this
# client cannot make (an unsupported URL, a malformed header): that fails the same way every time.
RETRYABLE = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class _Attempt(Exception):
    """An attempt that failed: whether another may succeed, the Retry-After it was given, and the error to raise
    when no attempt is left (with its cause: the transport's own error, if any)."""

    def __init__(self, retry: bool, asked: str | None, error: ServiceError, cause: BaseException | None) -> None:
        super().__init__(error)
        self.retry, self.asked, self.error, self.cause = retry, asked, error, cause


def _wait(failed: _Attempt, attempt: int, retries: int) -> float | None:
    """The pause before attempt ``attempt + 1``, or None when there is none. Backoff doubles from 50 ms,
    jittered so that clients failed together do not retry together; a Retry-After is honoured up to
    ``MAX_PAUSE_S``."""
    if attempt >= retries or not failed.retry:
        return None
    backoff = 0.05 * 2.0**attempt * (0.5 + random.random())
    try:
        seconds = float(failed.asked) if failed.asked else backoff
    except ValueError:
        seconds = backoff  # an HTTP date, or nonsense: back off as without one
    return min(seconds if math.isfinite(seconds) and seconds >= 0 else backoff, MAX_PAUSE_S)


def _checked(answer: httpx.Response) -> httpx.Response:
    """A 200 answer, or the failed attempt it is: sent again on 502/503/504 and on a 409 with Retry-After."""
    if answer.status_code == 200:
        return answer
    asked = answer.headers.get("retry-after") or None
    retry = answer.status_code in RETRY_STATUSES or (answer.status_code == 409 and asked is not None)
    raise _Attempt(retry, asked, ServiceError(answer.status_code, answer.text), None)


def _unanswered(failure: Exception) -> _Attempt:
    return _Attempt(True, None, ServiceError(None, f"no answer: {failure!r}"), failure)


_propagator: Any = None  # opentelemetry's, where it is installed (found on first use); False where it is not


def _trace_context() -> dict[str, str]:
    """The caller's current trace as W3C ``traceparent`` (and ``tracestate``) headers, so the service's spans
    continue it; nothing without OpenTelemetry or outside a span."""
    global _propagator
    if _propagator is None:
        try:
            from opentelemetry import propagate

            _propagator = propagate
        except Exception:  # not installed, or OTEL_PROPAGATORS names one that is not: calls go without
            _propagator = False
    carrier: dict[str, str] = {}
    if _propagator:
        _propagator.inject(carrier)
    return carrier


class _Base:
    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        model: str | None = None,
        version: str | int | None = None,
        api_key: str | None = None,
        timeout: float = 40.0,  # longer than the service's default deadline (LSTM_REQUEST_TIMEOUT_S): not cut off first
        retries: int = 5,  # about 1.5 s of backoff without an answer: a dead replica is out of the balancer by then
        transport: Any = None,  # an httpx transport in place of the network's (tests: httpx.MockTransport)
    ) -> None:
        if version is not None and model is None:
            raise ValueError("version: name the model too (model=...); the default model's version is the server's")
        if api_key is not None and not (api_key.isascii() and api_key.isprintable() and api_key.strip()):
            raise ValueError("api_key: printable ASCII, as the server's LSTM_API_KEYS holds it")
        version = None if version is None else str(version)
        self.url, self.model, self.version, self.timeout = url.rstrip("/"), model, version, timeout
        self.grpc = url.lower().startswith(("grpc://", "grpcs://"))
        if self.grpc and model is None:
            raise ValueError("grpc:// needs the model (model=...): the protocol names it in every call")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
        self.retries = retries
        self.transport = transport

    def _rpc_call(
        self,
        inputs: Sequence[ArrayLike],
        h0: ArrayLike | None,
        c0: ArrayLike | None,
        sequence: dict[str, Any] | None,
        ahead: dict[str, Any] | None,
    ) -> tuple[Any, list[int]]:
        from . import _grpc

        if ahead is not None:
            raise ValueError("horizon: forecasts go over HTTP (/predict's forecast option); gRPC has none")
        assert self.model is not None
        return _grpc.request(self.model, self.version, inputs, h0, c0, sequence)

    def _rpc_prediction(self, response: Any, lengths: list[int]) -> Prediction:
        from . import _grpc

        outputs, hn, cn = _grpc.answer(response, lengths)
        return Prediction(outputs, hn, cn, {"name": response.model_name, "version": response.model_version})

    def _ws_url(self, model: str) -> str:
        return self.url.replace("http", "ws", 1) + f"/v1/models/{model}/stream"


class Client(_Base):
    """Synchronous client."""

    def __init__(self, url: str = "http://127.0.0.1:8000", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.rpc: Any = None
        if self.grpc:
            from ._grpc import Channel

            self.rpc = Channel(self.url, self.metadata, self.timeout)
        self.http = httpx.Client(
            base_url=self.url, headers=self.headers, timeout=self.timeout, transport=self.transport
        )

    def predict(
        self,
        inputs: Sequence[ArrayLike],
        h0: ArrayLike | None = None,
        c0: ArrayLike | None = None,
        *,
        horizon: int | None = None,
        quantiles: Sequence[float] | None = None,
    ) -> Prediction:
        """A batch of sequences ([batch][steps][features]) with optional states ([batch][layers][hidden]). With a
        ``horizon``, also each sequence's forecast that many steps ahead of its last step, with ``quantiles``
        (``Prediction.forecast``; over HTTP: the Open Inference Protocol has no forecast)."""
        return self._infer(inputs, h0, c0, None, _ahead(horizon, quantiles))

    def _infer(
        self,
        inputs: Sequence[ArrayLike],
        h0: ArrayLike | None,
        c0: ArrayLike | None,
        sequence: dict[str, Any] | None,
        ahead: dict[str, Any] | None = None,
    ) -> Prediction:
        if self.rpc is not None:
            call, lengths = self._rpc_call(inputs, h0, c0, sequence, ahead)
            return self._rpc_prediction(self._retried(lambda: self.rpc.infer(call, _trace_context())), lengths)
        body = _body(inputs, h0, c0, sequence, ahead)
        path = _predict_path(self.model, self.version)

        def send() -> httpx.Response:
            try:
                answer = self.http.post(path, json=body, headers=_trace_context())
            except RETRYABLE as e:
                raise _unanswered(e) from e
            return _checked(answer)

        return _prediction(self._retried(send))

    def _retried(self, send: Callable[[], T]) -> T:
        """``send()``, again while its failure says another attempt may succeed (see the module's text)."""
        attempt = 0
        while True:
            try:
                return send()
            except _Attempt as failed:
                pause = _wait(failed, attempt, self.retries)
                if pause is None:
                    raise failed.error from failed.cause
            time.sleep(pause)
            attempt += 1

    def sequence(self, sequence_id: int | str | None = None) -> HeldSequence:
        """A long sequence whose states the server keeps (any worker or replica); a new id when none is given."""
        return HeldSequence(self, sequence_id)

    def default_model(self) -> str:
        if self.grpc:
            assert self.model is not None
            return self.model
        return str(_answered(self.http.get("/v1/models")).json()["default"]["name"])

    def stream(self, transport: str = "http") -> Stream:
        """A long sequence whose states this client carries: ``http``, each chunk a call of the client's own
        transport (HTTP or gRPC); ``websocket``, one connection that keeps them (HTTP URLs only)."""
        return Stream(self, transport)

    def close(self) -> None:
        self.http.close()
        if self.rpc is not None:
            self.rpc.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Carried:
    """The states a stream over /predict carries from one chunk to the next."""

    def __init__(self, transport: str) -> None:
        if transport not in ("http", "websocket"):
            raise ValueError("transport: 'http' or 'websocket'")
        self.transport = transport
        self.hn: np.ndarray | None = None  # [layers, hidden] after the last chunk (http transport)
        self.cn: np.ndarray | None = None
        self._ws: Any = None

    def _states(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        return (None, None) if self.hn is None or self.cn is None else (self.hn[None], self.cn[None])

    def _keep(self, answer: Prediction) -> np.ndarray:
        self.hn, self.cn = answer.hn[0], answer.cn[0]
        return answer.outputs[0]


class Stream(_Carried):
    """One long sequence sent chunk by chunk; the LSTM's states are carried between chunks."""

    def __init__(self, client: Client, transport: str = "http") -> None:
        super().__init__(transport)
        self.client = client
        self._open = contextlib.ExitStack()
        if transport == "websocket":
            if client.grpc:
                raise ValueError("transport: the WebSocket stream needs an http:// URL")
            from websockets.sync.client import connect

            model = client.model or client.default_model()
            headers = {**client.headers, **_trace_context()}
            self._ws = self._open.enter_context(connect(client._ws_url(model), additional_headers=headers))

    def send(self, chunk: ArrayLike) -> np.ndarray:
        """The next chunk ([steps][features]); returns its outputs [steps, outputs]."""
        if self._ws is not None:
            self._ws.send(_ws_message(chunk))
            return _ws_outputs(self._ws.recv())
        return self._keep(self.client.predict([chunk], *self._states()))

    def reset(self) -> None:
        """Start the sequence over from zero states."""
        self.hn = self.cn = None
        if self._ws is not None:
            self._ws.send('{"stream": "0", "reset": true}')
            self._ws.recv()

    def close(self) -> None:
        self._open.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Held:
    """A server-held sequence's id and the number of its next chunk."""

    def __init__(self, sequence_id: int | str | None) -> None:
        self.id = sequence_id if sequence_id is not None else f"lstm-client-{os.urandom(12).hex()}"
        self.chunk = 0

    def _sequence(self, end: bool) -> dict[str, Any]:
        return {"id": self.id, "start": self.chunk == 0, "end": end, "chunk": self.chunk}

    def _next(self, answer: Prediction) -> np.ndarray:
        self.chunk += 1
        return answer.outputs[0]


class HeldSequence(_Held):
    """One long sequence sent chunk by chunk; the server keeps its states. ``end=True`` on the last chunk
    ends it at once; otherwise the server lets it expire after its idle time."""

    def __init__(self, client: Client, sequence_id: int | str | None = None) -> None:
        super().__init__(sequence_id)
        self.client = client

    def send(self, chunk: ArrayLike, end: bool = False) -> np.ndarray:
        """The next chunk ([steps][features]); returns its outputs [steps, outputs]."""
        return self._next(self.client._infer([chunk], None, None, self._sequence(end)))


class AsyncClient(_Base):
    """Asynchronous client."""

    def __init__(self, url: str = "http://127.0.0.1:8000", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.rpc: Any = None
        if self.grpc:
            from ._grpc import AsyncChannel

            self.rpc = AsyncChannel(self.url, self.metadata, self.timeout)
        self.http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=self.timeout, transport=self.transport
        )

    async def predict(
        self,
        inputs: Sequence[ArrayLike],
        h0: ArrayLike | None = None,
        c0: ArrayLike | None = None,
        *,
        horizon: int | None = None,
        quantiles: Sequence[float] | None = None,
    ) -> Prediction:
        return await self._infer(inputs, h0, c0, None, _ahead(horizon, quantiles))

    async def _infer(
        self,
        inputs: Sequence[ArrayLike],
        h0: ArrayLike | None,
        c0: ArrayLike | None,
        sequence: dict[str, Any] | None,
        ahead: dict[str, Any] | None = None,
    ) -> Prediction:
        if self.rpc is not None:
            call, lengths = self._rpc_call(inputs, h0, c0, sequence, ahead)
            return self._rpc_prediction(await self._retried(lambda: self.rpc.infer(call, _trace_context())), lengths)
        body = _body(inputs, h0, c0, sequence, ahead)
        path = _predict_path(self.model, self.version)

        async def send() -> httpx.Response:
            try:
                answer = await self.http.post(path, json=body, headers=_trace_context())
            except RETRYABLE as e:
                raise _unanswered(e) from e
            return _checked(answer)

        return _prediction(await self._retried(send))

    async def _retried(self, send: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                return await send()
            except _Attempt as failed:
                pause = _wait(failed, attempt, self.retries)
                if pause is None:
                    raise failed.error from failed.cause
            await asyncio.sleep(pause)
            attempt += 1

    def sequence(self, sequence_id: int | str | None = None) -> AsyncHeldSequence:
        return AsyncHeldSequence(self, sequence_id)

    async def default_model(self) -> str:
        if self.grpc:
            assert self.model is not None
            return self.model
        return str(_answered(await self.http.get("/v1/models")).json()["default"]["name"])

    async def stream(self, transport: str = "http") -> AsyncStream:
        stream = AsyncStream(self, transport)
        if transport == "websocket":
            if self.grpc:
                raise ValueError("transport: the WebSocket stream needs an http:// URL")
            from websockets.asyncio.client import connect

            model = self.model or await self.default_model()
            ws = connect(self._ws_url(model), additional_headers={**self.headers, **_trace_context()})
            stream._ws = await stream._open.enter_async_context(ws)
        return stream

    async def aclose(self) -> None:
        await self.http.aclose()
        if self.rpc is not None:
            await self.rpc.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncStream(_Carried):
    """``Stream`` with ``await``; made by ``await AsyncClient.stream()``."""

    def __init__(self, client: AsyncClient, transport: str = "http") -> None:
        super().__init__(transport)
        self.client = client
        self._open = contextlib.AsyncExitStack()

    async def send(self, chunk: ArrayLike) -> np.ndarray:
        if self._ws is not None:
            await self._ws.send(_ws_message(chunk))
            return _ws_outputs(await self._ws.recv())
        return self._keep(await self.client.predict([chunk], *self._states()))

    async def reset(self) -> None:
        self.hn = self.cn = None
        if self._ws is not None:
            await self._ws.send('{"stream": "0", "reset": true}')
            await self._ws.recv()

    async def aclose(self) -> None:
        await self._open.aclose()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncHeldSequence(_Held):
    """``HeldSequence`` with ``await``."""

    def __init__(self, client: AsyncClient, sequence_id: int | str | None = None) -> None:
        super().__init__(sequence_id)
        self.client = client

    async def send(self, chunk: ArrayLike, end: bool = False) -> np.ndarray:
        return self._next(await self.client._infer([chunk], None, None, self._sequence(end)))
