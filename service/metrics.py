"""Prometheus metrics (prometheus-client). With several uvicorn workers, PROMETHEUS_MULTIPROC_DIR
(set by ``python -m service`` before this module is imported) makes every worker write its samples
to shared files, and ``/metrics`` adds them up, whichever worker answers."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROUTES = frozenset(
    {
        "/predict",
        "/model",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/docs",
        "/redoc",
        "/openapi.json",
        "/v1/timeseries/forecast",
    }
)

REQUESTS = Counter(
    "lstm_requests_total",
    "Requests answered (HTTP, and gRPC as grpc/<method>), by route and status.",
    ["route", "status"],
)
LATENCY = Histogram(
    "lstm_request_duration_seconds", "Time from request to answer, by route.", ["route"], buckets=LATENCY_BUCKETS
)
INFERENCE = Histogram(
    "lstm_inference_duration_seconds",
    "ONNX Runtime time of one (merged) model call, by model and version.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "lstm_batch_size_sequences",
    "Sequences in one model call, by model and version.",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
WIDE_CALLS = Counter(
    "lstm_wide_calls_total",
    "ONNX Runtime calls that ran on every core while the server's other workers were idle (LSTM_WIDE_MIN_STEPS), "
    "by model and version.",
    ["model", "version"],
)
MODEL_ERRORS = Counter(
    "lstm_model_request_errors_total",
    "Inference requests (WebSocket messages included) a model version answered with an error.",
    ["model", "version"],
)
MODEL_LATENCY = Histogram(
    "lstm_model_request_duration_seconds",
    "Time from a request's admission to its answer, by model and version (its count: the requests answered, "
    "WebSocket messages included).",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
MODEL_LOADS = Counter(
    "lstm_model_loads_total",
    "Model versions loaded while serving (model control), by outcome (ok, failed); a failure that names no "
    'version (an unreadable configuration) has version "".',
    ["model", "version", "outcome"],
)
MODEL_UNLOADS = Counter(
    "lstm_model_unloads_total", "Model versions that stopped serving while the server ran.", ["model", "version"]
)
QUEUE_DEPTH = Gauge(
    "lstm_queue_depth",
    "Requests admitted: being decoded, queued for the model, or running.",
    multiprocess_mode="livesum",
)
REJECTED = Counter(
    "lstm_rejected_requests_total",
    "Requests refused before the model ran, by reason (queue_full, deadline, unauthorized, slow_headers, "
    "large_headers, pipelined).",
    ["reason"],
)
STREAM_MESSAGES = Counter("lstm_stream_messages_total", "WebSocket stream messages answered.")
STREAM_CLOSES = Counter(
    "lstm_stream_closes_total",
    "WebSocket stream connections ended, by close code (1000 also when the client closed).",
    ["code"],
)
MODEL_INFO = Gauge(
    "lstm_model_info", "The served model (always 1).", ["name", "version", "provider"], multiprocess_mode="livemax"
)


def answered(route: str, status: int, seconds: float) -> None:
    """Count one answered HTTP request and its time; ``route`` as ``route_label`` gives it."""
    count, latency = _request_series(route, status)
    count.inc()
    latency.observe(seconds)


@functools.lru_cache(maxsize=1024)
def _request_series(route: str, status: int) -> tuple[Any, Any]:
    """The labelled series of one route and status (looked up once: a lookup costs more than the update)."""
    return REQUESTS.labels(route, str(status)), LATENCY.labels(route)


@functools.lru_cache(maxsize=1024)
def call_series(model: str, version: str) -> tuple[Any, Any]:
    """A model version's model-call series: inference time and batch size."""
    return INFERENCE.labels(model, version), BATCH_SIZE.labels(model, version)


def version_series(model: str, version: str) -> tuple[Any, Any]:
    """A model version's request series: errors, and latency (whose count is every request)."""
    return MODEL_ERRORS.labels(model, version), MODEL_LATENCY.labels(model, version)


def route_label(path: str) -> str:
    """A bounded label: the known routes, the model routes by kind, and 'other' for anything else."""
    if path in ROUTES:
        return path
    if path.startswith("/v2/"):
        return "/v2/infer" if path.endswith("/infer") else "/v2"
    if path.startswith("/v1/models"):
        return "/v1/predict" if path.endswith("/predict") else "/v1/models"
    return "other"


def forget_dead_workers(folder: str) -> list[int]:
    """Remove the live gauges of worker processes that are gone (killed, crashed, replaced), so their last
    values do not linger in the sums; their counters stay, as Prometheus counters must. Returns their pids."""
    dead = []
    for path in Path(folder).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.append(pid)
        except PermissionError:  # alive, under another user
            pass
    for pid in set(dead):
        multiprocess.mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]
    return sorted(set(dead))


def exposition() -> tuple[bytes, str]:
    """The metrics page and its content type."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        forget_dead_workers(folder)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
