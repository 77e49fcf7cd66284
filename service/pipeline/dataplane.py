"""The request path every protocol shares: admit, read, decode, infer, encode, within one deadline.

A protocol is a codec (``Codec``): it turns its wire format into a ``Call`` (the validated batch)
and results back into its wire format. Everything between lives here, once: admission (503 beyond
``max_queue`` requests per worker, counted from before the body is read), the deadline (504, over
reading and decoding the body too), decoding large bodies off the event loop, batching, the engine
and the explanation path. Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from anyio.to_thread import run_sync as run_in_threadpool

from .. import metrics, tracing
from ..model.batch import Batch, SequenceResult
from ..model.contract import ModelSpec
from ..model.engine import Engine
from ..model.errors import ExplainUnavailable
from . import memory
from .batcher import Batcher, timed_predict
from .errors import DeadlineExceeded, InvalidInput, Loc, Overloaded, ServiceError, error
from .rules import Limits
from .sequences import SequenceRef, Sequences

INLINE_DECODE_BYTES = 256 * 1024  # larger bodies are decoded off the event loop
A = TypeVar("A", covariant=True)
C = TypeVar("C")


@dataclass
class Call(Generic[C]):
    """A decoded request: the validated batch, and what its codec needs to answer it."""

    batch: Batch
    explain: bool = False  # also return per-step gates and states
    explain_loc: Loc = ("explain",)  # where the request asked for them, for an error about it
    context: C | None = None  # the codec's own: requested outputs, a stream's name
    sequence: SequenceRef | None = None  # a server-held sequence this chunk continues (one sequence)
    # What the codec asks of the version that runs the call, checked before another version runs it (a raise)
    fits: Callable[[ModelSpec], None] | None = None


@dataclass
class Outcome:
    results: list[SequenceResult]  # one per sequence, in order
    explanations: list[dict[str, Any]] | None = None


class Codec(Protocol[A]):
    """One protocol's wire format around the shared path."""

    def decode(self, body: bytes, spec: ModelSpec, limits: Limits) -> Call[Any]: ...

    def encode(self, call: Call[Any], outcome: Outcome, spec: ModelSpec) -> A: ...


def _unknown_sequence(e: InvalidInput) -> bool:
    return bool(e.errors) and e.errors[0]["type"] == "sequence_unknown"


@dataclass
class Admission:
    """Requests admitted at once by this worker, over every model and protocol."""

    limit: int
    admitted: int = 0
    # Whether the request admitted is the only one its server has in progress (the app's lifespan sets it from
    # the server's): then no other can be on its way in, and it needs no turn of the event loop to find out.
    lone: Callable[[], bool] = field(default=lambda: False, repr=False)
    # Where the count goes for the server's other workers to see (``pipeline.cores``: the registry sets it when the
    # server has a board of its workers).
    post: Callable[[int], None] = field(default=lambda n: None, repr=False)

    def enter(self) -> None:
        if self.admitted >= self.limit:
            metrics.REJECTED.labels("queue_full").inc()
            raise Overloaded(f"{self.admitted} requests are in progress, the most this worker admits; retry shortly")
        self.admitted += 1
        metrics.QUEUE_DEPTH.inc()
        self.post(self.admitted)

    def leave(self) -> None:
        self.admitted -= 1
        metrics.QUEUE_DEPTH.dec()
        self.post(self.admitted)


INLINE_BUDGET_S = 0.002  # the longest a model call may hold the event loop


def inline_limit(engine: Engine, most: int, budget_s: float = INLINE_BUDGET_S) -> int:
    """The steps a lone request may have to run on the event loop: at most ``most``, and no more than this
    model runs within ``budget_s`` here (measured now, best of three: a larger model or another device gets
    a smaller limit, so the loop is never held for long)."""
    if most <= 0:
        return 0
    x = np.zeros((most, engine.spec.input_size), dtype=np.float32)
    batch = Batch([x], *engine.spec.zero_states(1))
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        engine.predict(batch)
        best = min(best, time.perf_counter() - start)
    return most if best <= budget_s else int(most * budget_s / best)


@dataclass(eq=False)  # each is one version's own: compared and hashed by identity
class DataPlane:
    """One model version's request path.

    A version stops serving (a load replaced it, or an unload) by ``retire``: the registry no longer hands
    it out, the requests it admitted finish on it, and ``drained`` is set once the last one has.
    """

    engine: Engine
    limits: Limits
    batcher: Batcher | None  # None: each request runs alone in a worker thread
    admission: Admission
    timeout_s: float  # deadline of one request, from its admission
    inline_max_steps: int  # a lone request of at most this many real steps runs on the event loop (inline_limit)
    sequences: Sequences | None = None  # server-held sequences; None: requests naming one are refused
    active: int = field(default=0, init=False)  # requests admitted on this version, not yet answered
    retired: bool = field(default=False, init=False)
    drained: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    # the model's versions that serve, newest first (the registry sets it)
    family: list[DataPlane] = field(default_factory=list, init=False, repr=False)
    # which versions of this model this one replaced, and when: said in a sequence's error until replaced_until
    replaced: str = field(default="", init=False)
    replaced_until: float = field(default=0.0, init=False)
    _served: tuple[Any, Any] = field(init=False, repr=False)  # this version's metric series

    def __post_init__(self) -> None:
        self._served = metrics.version_series(self.engine.spec.name, self.engine.spec.version)

    def retire(self) -> None:
        """Take no more requests; ``drained`` is set when those admitted are answered."""
        self.retired = True
        if not self.active:
            self.drained.set()

    async def serve(
        self, codec: Codec[A], read: Callable[[], Awaitable[bytes]], pinned: bool = False, size: int | None = None
    ) -> A:
        """Admit, then read, decode, infer and encode within the deadline. ``pinned``: the request named this
        version (else a chunk of a server-held sequence goes on with the version of its model it started on).
        ``size``: the request's bytes, where the codec holds them already (gRPC) and ``read`` gives none."""
        self.admission.enter()
        self._enter()
        start, answered, measured = time.perf_counter(), False, 0
        top = tracing.current()  # the request's span: what it asked of which model
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await read()
                measured = len(body) if size is None else size
                spec = self.engine.spec
                with tracing.span("decode"):
                    if measured <= INLINE_DECODE_BYTES:
                        call = codec.decode(body, spec, self.limits)
                    else:
                        call = await run_in_threadpool(codec.decode, body, spec, self.limits)
                if top.is_recording():
                    top.set_attributes(tracing.request_attributes(spec, call.batch.size, call.batch.steps))
                if call.sequence is not None:
                    outcome, spec = await self._in_sequence(call, pinned)
                else:
                    outcome = await self.infer(call) if call.batch.size else Outcome([])  # a control message
                with tracing.span("encode"):
                    answer = codec.encode(call, outcome, spec)
                answered = True
                return answer
        except TimeoutError:
            metrics.REJECTED.labels("deadline").inc()
            raise DeadlineExceeded(f"The request took longer than its {self.timeout_s:g} s deadline") from None
        except ServiceError as e:
            # A client's error needs no stack; dropping it frees the decoder's frames, and what they held
            # (the parsed body), now rather than at the next garbage collection.
            raise e.with_traceback(None) from None
        finally:
            self.admission.leave()
            self._leave()
            if not answered:
                self._served[0].inc()
            self._served[1].observe(time.perf_counter() - start)
            if measured > memory.LARGE_BODY_BYTES:
                memory.trim()

    async def _in_sequence(self, call: Call[Any], pinned: bool) -> tuple[Outcome, ModelSpec]:
        """The chunk on the version of the model its sequence started on: this one, or (unless ``pinned``)
        another that still serves; the outcome, and the model version that ran it."""
        assert call.sequence is not None
        if self.sequences is None:
            msg = "This server holds no sequences: send h0 and c0 with each chunk instead"
            raise InvalidInput([error(call.sequence.loc, msg, "unsupported")])
        try:
            return await self.sequences.run(call, self.engine.spec, self.infer), self.engine.spec
        except InvalidInput as e:
            if not _unknown_sequence(e):
                raise
            if not pinned and not call.sequence.start:
                reads = self.engine.spec.reads()  # what the chunk was read as: another version that reads the same
                for other in self.family:  # started before this version became the model's default
                    if other is not self and not other.retired and other.engine.spec.reads() == reads:
                        if call.fits is not None:
                            call.fits(other.engine.spec)  # before the chunk runs there: a refusal changes nothing
                        found = await other._continue(call)
                        if found is not None:
                            return found
            if self.replaced and time.monotonic() < self.replaced_until:
                # A sequence stays with the weights it started on: those weights' sequences ended with them.
                e.errors[0]["msg"] += f" (a sequence started on {self.replaced} ended with it)"
            raise

    async def _continue(self, call: Call[Any]) -> tuple[Outcome, ModelSpec] | None:
        """A chunk of a sequence this version may hold (None if it does not), counted as its own work."""
        assert self.sequences is not None
        self._enter()
        try:
            return await self.sequences.run(call, self.engine.spec, self.infer), self.engine.spec
        except InvalidInput as e:
            if _unknown_sequence(e):
                return None
            raise
        finally:
            self._leave()

    def _enter(self) -> None:
        self.active += 1

    def _leave(self) -> None:
        self.active -= 1
        if self.retired and not self.active:
            self.drained.set()

    def _idle(self) -> bool:
        return self.admission.admitted == 1 and (self.batcher is None or self.batcher.depth == 0)

    async def _alone(self) -> bool:
        """Whether this request is all the worker has to do, still after one turn of the event loop:
        requests that arrived with it are admitted in that turn, and then go to the batcher together. No turn
        is needed when no other request can be on its way (``Admission.lone``)."""
        if not self._idle():
            return False
        if self.admission.lone():
            return True
        await asyncio.sleep(0)
        return self._idle()

    async def infer(self, call: Call[Any]) -> Outcome:
        with tracing.span("infer") as span:
            if call.batch.steps <= self.inline_max_steps and await self._alone():
                # On the event loop: for a small lone request, two thread hand-offs cost more than the model.
                span.set_attribute("lstm.run", "inline")
                results = timed_predict(self.engine, call.batch)
            elif self.batcher is not None:
                span.set_attribute("lstm.run", "batched")
                results = await self.batcher.predict(call.batch)  # cancelled at the deadline: dropped if still queued
            else:
                span.set_attribute("lstm.run", "thread")
                results = await run_in_threadpool(timed_predict, self.engine, call.batch)
            if not call.explain:
                return Outcome(results)
            try:
                with tracing.span("explain"):
                    return Outcome(results, await run_in_threadpool(self.engine.explain, call.batch))
            except ExplainUnavailable as e:
                raise InvalidInput(
                    [error(call.explain_loc, f"This model cannot be explained: {e}", "explain_unavailable")]
                ) from None
