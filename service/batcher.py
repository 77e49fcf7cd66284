"""Dynamic batching: concurrent predict calls merged into one ONNX Runtime call, split back in order.

One worker thread owns the model. While it runs a batch, new calls queue up; when
it is done it takes everything queued that fits (sequences, padded steps) and runs
it as one padded batch with per-sequence lengths, so every sequence still gets
exactly its own results. An idle worker starts at once: batching adds no wait to a
lone request unless ``max_delay_s`` asks the worker to linger for company.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import metrics
from .engine import Batch, Engine, SequenceResult

log = logging.getLogger("service.batcher")


@dataclass
class _Job:
    batch: Batch
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[SequenceResult]]
    size: int = field(init=False)  # sequences
    steps: int = field(init=False)  # padded length

    def __post_init__(self) -> None:
        self.size = len(self.batch.lengths)
        self.steps = int(self.batch.x.shape[1])


def merge(batches: list[Batch]) -> Batch:
    """One padded batch of all sequences, in order."""
    if len(batches) == 1:
        return batches[0]
    steps = max(b.x.shape[1] for b in batches)
    total = sum(len(b.lengths) for b in batches)
    x = np.zeros((total, steps, batches[0].x.shape[2]), dtype=np.float32)
    row = 0
    for b in batches:
        x[row : row + len(b.lengths), : b.x.shape[1]] = b.x
        row += len(b.lengths)
    return Batch(
        x=x,
        h0=np.concatenate([b.h0 for b in batches], axis=1),
        c0=np.concatenate([b.c0 for b in batches], axis=1),
        lengths=np.concatenate([b.lengths for b in batches]),
    )


def _resolve(future: asyncio.Future[list[SequenceResult]], result: list[SequenceResult] | BaseException) -> None:
    if future.cancelled():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class Batcher:
    def __init__(
        self,
        engine: Engine,
        max_batch_size: int = 64,
        max_delay_s: float = 0.0,
        max_padded_steps: int | None = None,
    ) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size  # sequences in one merged call (a larger request runs alone)
        self.max_delay_s = max_delay_s  # how long a non-full batch may wait for more calls
        self.max_padded_steps = max_padded_steps  # sequences x padded length of one merged call
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._held: _Job | None = None  # a job that did not fit the last batch: first in the next
        self._thread = threading.Thread(target=self._work, name="lstm-batcher", daemon=True)
        self._depth = 0  # calls waiting or running
        self._lock = threading.Lock()

    @property
    def depth(self) -> int:
        return self._depth

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    async def predict(self, batch: Batch) -> list[SequenceResult]:
        loop = asyncio.get_running_loop()
        job = _Job(batch, loop, loop.create_future())
        with self._lock:
            self._depth += 1
        self._queue.put(job)
        return await job.future

    def _fits(self, size: int, steps: int, job: _Job) -> bool:
        if size + job.size > self.max_batch_size:
            return False
        budget = self.max_padded_steps
        return budget is None or (size + job.size) * max(steps, job.steps) <= budget

    def _collect(self, first: _Job) -> list[_Job]:
        jobs, size, steps = [first], first.size, first.steps
        deadline = time.monotonic() + self.max_delay_s
        while size < self.max_batch_size:
            try:
                remaining = deadline - time.monotonic()
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # stop: finish this batch, then exit
                self._queue.put(None)
                break
            if job.future.cancelled():  # its request gave up (deadline): drop the work
                self._done(1)
                continue
            if not self._fits(size, steps, job):
                self._held = job
                break
            jobs.append(job)
            size, steps = size + job.size, max(steps, job.steps)
        return jobs

    def _work(self) -> None:
        while True:
            first = self._held or self._queue.get()
            self._held = None
            if first is None:
                return
            if first.future.cancelled():
                self._done(1)
                continue
            jobs = self._collect(first)
            merged = merge([j.batch for j in jobs])
            start = time.perf_counter()
            try:
                results: list[SequenceResult] | BaseException = self.engine.predict(merged)
            except Exception as e:  # a failed call fails its own requests, never the worker
                log.exception("batched inference failed")
                results = e
            metrics.INFERENCE.observe(time.perf_counter() - start)
            metrics.BATCH_SIZE.observe(len(merged.lengths))
            row = 0
            for job in jobs:
                part = results if isinstance(results, BaseException) else results[row : row + job.size]
                row += job.size
                job.loop.call_soon_threadsafe(_resolve, job.future, part)
            self._done(len(jobs))

    def _done(self, count: int) -> None:
        with self._lock:
            self._depth -= count
