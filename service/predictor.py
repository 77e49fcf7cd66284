"""The /predict pipeline, bytes in and bytes out: admit, decode and validate, run the model, encode.

Shared by the ASGI fast path and the documented FastAPI route; knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from . import metrics
from .batcher import Batcher
from .engine import Batch, Engine, SequenceResult
from .errors import DeadlineExceeded, Overloaded
from .payload import Limits, decode_predict, encode_predict

INLINE_DECODE_BYTES = 256 * 1024  # larger bodies are decoded off the event loop
T = TypeVar("T")


@dataclass
class Predictor:
    engine: Engine
    limits: Limits
    batcher: Batcher | None  # None: each request runs alone in a worker thread
    timeout_s: float = 30.0  # deadline of one request
    max_queue: int = 256  # requests admitted at once; 503 beyond
    admitted: int = field(default=0, init=False)

    async def __call__(self, body: bytes) -> bytes:
        """A /predict body in, its answer out."""
        return await self.admitted_call(self._run(body))

    async def run(self, batch: Batch) -> list[SequenceResult]:
        """An already decoded batch (another protocol's request) through the same admission,
        deadline and batching."""
        return await self.admitted_call(self._model(batch))

    async def admitted_call(self, work: Coroutine[Any, Any, T]) -> T:
        if self.admitted >= self.max_queue:
            work.close()
            metrics.REJECTED.labels("queue_full").inc()
            raise Overloaded(f"{self.admitted} requests are in progress, the most this worker admits; retry shortly")
        self.admitted += 1
        metrics.QUEUE_DEPTH.inc()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await work
        except TimeoutError:
            metrics.REJECTED.labels("deadline").inc()
            raise DeadlineExceeded(f"The request took longer than its {self.timeout_s:g} s deadline") from None
        finally:
            self.admitted -= 1
            metrics.QUEUE_DEPTH.dec()

    async def _model(self, batch: Batch) -> list[SequenceResult]:
        if self.batcher is not None:
            return await self.batcher.predict(batch)  # cancelled at the deadline: dropped if still queued
        return await run_in_threadpool(self.engine.predict, batch)

    async def _run(self, body: bytes) -> bytes:
        spec = self.engine.spec
        if len(body) <= INLINE_DECODE_BYTES:
            call = decode_predict(body, spec, self.limits)
        else:
            call = await run_in_threadpool(decode_predict, body, spec, self.limits)
        results = await self._model(call.batch)
        explanations = await run_in_threadpool(self.engine.explain, call.batch) if call.explain else None
        return encode_predict(results, spec, explanations)
