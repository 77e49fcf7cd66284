"""Dynamic batching: concurrent predict calls merged into one ONNX Runtime call, split back in order.

One worker thread owns the model. While it runs a batch, new calls queue up; when
it is done it takes everything queued that fits (sequences, real steps) and hands
it to the engine as one batch, which groups the sequences by length and runs long
ones in time chunks (``model.schedule``), so every sequence still gets exactly its
own results. An idle worker starts at once: batching adds no wait to a lone request
unless ``max_delay_s`` asks the worker to linger for company.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from .. import metrics, tracing
from ..model.batch import Batch, SequenceResult, merge
from ..model.engine import CALL_MAX_STEPS, Engine

log = logging.getLogger(__name__)


@dataclass
class _Job:
    batch: Batch
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[SequenceResult]]
    trace: tracing.Queued | None  # while traces are on: its queue span, and the request's span a batch links to
    size: int = field(init=False)  # sequences
    steps: int = field(init=False)  # real steps

    def __post_init__(self) -> None:
        self.size = self.batch.size
        self.steps = self.batch.steps


def timed_predict(engine: Engine, batch: Batch) -> list[SequenceResult]:
    """``engine.predict``, counted in the model-call metrics (time and sequences), wherever it runs."""
    start = time.perf_counter()
    results = engine.predict(batch)
    inference, batch_size = metrics.call_series(engine.spec.name, engine.spec.version)
    inference.observe(time.perf_counter() - start)
    batch_size.observe(batch.size)
    return results


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
        max_merged_steps: int = CALL_MAX_STEPS,
    ) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size  # sequences in one merged call (a larger request runs alone)
        self.max_delay_s = max_delay_s  # how long a non-full batch may wait for more calls
        # Real steps of one merged call (a larger request runs alone), so that small requests are not
        # held up behind a long one.
        self.max_merged_steps = max_merged_steps
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._held: _Job | None = None  # a job that did not fit the last batch: first in the next
        self._thread = threading.Thread(target=self._work, name="lstm-batcher", daemon=True)
        self._depth = 0  # calls waiting or running
        self._lock = threading.Lock()

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    async def predict(self, batch: Batch) -> list[SequenceResult]:
        loop = asyncio.get_running_loop()
        job = _Job(batch, loop, loop.create_future(), tracing.queued())
        with self._lock:
            self._depth += 1
        self._queue.put(job)
        return await job.future

    def _fits(self, size: int, steps: int, job: _Job) -> bool:
        return size + job.size <= self.max_batch_size and steps + job.steps <= self.max_merged_steps

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
                self._drop(job)
                continue
            if not self._fits(size, steps, job):
                self._held = job
                break
            jobs.append(job)
            size, steps = size + job.size, steps + job.steps
        return jobs

    def _work(self) -> None:
        while True:
            first = self._held or self._queue.get()
            self._held = None
            if first is None:
                return
            if first.future.cancelled():
                self._drop(first)
                continue
            jobs = self._collect(first)
            merged = merge([j.batch for j in jobs])
            try:
                results: list[SequenceResult] | BaseException = self._run(jobs, merged)
            except Exception as e:  # a failed call fails its own requests, never the worker
                log.exception("batched inference failed")
                results = e
            row = 0
            for job in jobs:
                part = results if isinstance(results, BaseException) else results[row : row + job.size]
                row += job.size
                job.loop.call_soon_threadsafe(_resolve, job.future, part)
            self._done(len(jobs))

    def _run(self, jobs: list[_Job], merged: Batch) -> list[SequenceResult]:
        traced = [job.trace for job in jobs if job.trace is not None]
        if not traced:
            return timed_predict(self.engine, merged)
        for waiting, _ in traced:  # their wait ends: the batch they are in runs
            waiting.end()
        attributes = tracing.batch_attributes(self.engine.spec, len(jobs), merged.size, merged.steps)
        with tracing.batch_span([request for _, request in traced], attributes):
            return timed_predict(self.engine, merged)

    def _drop(self, job: _Job) -> None:
        """A job whose request gave up while it waited: never run."""
        if job.trace is not None:
            job.trace[0].set_attribute("lstm.dropped", True)
            job.trace[0].end()
        self._done(1)

    def _done(self, count: int) -> None:
        with self._lock:
            self._depth -= count
