"""The /predict pipeline, bytes in and bytes out: decode and validate, run the model, encode.

Shared by the ASGI fast path and the documented FastAPI route; knows nothing of HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from .batcher import Batcher
from .engine import Engine
from .payload import Limits, decode_predict, encode_predict

INLINE_DECODE_BYTES = 256 * 1024  # larger bodies are decoded off the event loop


@dataclass
class Predictor:
    engine: Engine
    limits: Limits
    batcher: Batcher | None  # None: each request runs alone in a worker thread

    async def __call__(self, body: bytes) -> bytes:
        spec = self.engine.spec
        if len(body) <= INLINE_DECODE_BYTES:
            call = decode_predict(body, spec, self.limits)
        else:
            call = await run_in_threadpool(decode_predict, body, spec, self.limits)
        if self.batcher is not None:
            results = await self.batcher.predict(call.batch)
        else:
            results = await run_in_threadpool(self.engine.predict, call.batch)
        explanations = await run_in_threadpool(self.engine.explain, call.batch) if call.explain else None
        return encode_predict(results, spec, explanations)
