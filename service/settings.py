"""Configuration from the environment (prefix ``LSTM_``), read once through ``get_settings()``."""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LSTM_", protected_namespaces=("settings_",))

    # Where the models are: <model_repository>/<name>/<version>/{model.onnx,metadata.json}.
    model_repository: Path = Path("models")
    # The model to serve; None: the repository's only model.
    model_name: str | None = None
    # Its version; None: the highest.
    model_version: int | None = Field(default=None, ge=1)
    # auto: CUDA where ONNX Runtime can use a GPU, else the CPU. cuda: fail at start-up without one.
    provider: Literal["auto", "cuda", "cpu"] = "auto"
    # ONNX Runtime threads inside one operator, per worker (None: the cores shared out among the
    # workers; 0: ONNX Runtime's own choice, one per core).
    intra_op_threads: int | None = Field(default=None, ge=0)
    # ONNX Runtime threads across independent operators.
    inter_op_threads: int = Field(default=1, ge=0)
    # Limits of one /predict request.
    max_batch_size: int = Field(default=256, ge=1)  # sequences
    max_steps: int = Field(default=10_000, ge=1)  # steps in each sequence
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)  # 413 beyond
    max_total_values: int = Field(default=2_000_000, ge=1)  # numbers in inputs (steps x features, all sequences)
    # Deadline of one request, from its body's arrival: 504 beyond, queued work dropped.
    request_timeout_s: float = Field(default=30.0, gt=0)
    # Requests admitted at once per worker (being decoded, queued for the model or running);
    # beyond it the answer is 503 with Retry-After, at once.
    max_queue: int = Field(default=256, ge=1)
    # WebSocket streaming (/v1/models/{name}/stream): connections per worker, streams per
    # connection, and seconds without a message before the server closes it.
    stream_max_connections: int = Field(default=256, ge=1)
    stream_max_streams: int = Field(default=64, ge=1)
    stream_idle_s: float = Field(default=300.0, gt=0)
    # With "explain": true, steps (over all sequences) x layers x hidden units; each value is six numbers back.
    explain_max_values: int = Field(default=131_072, ge=1)
    # Dynamic batching: concurrent requests merged into one ONNX Runtime call.
    batching: bool = True
    batch_max_size: int = Field(default=64, ge=1)  # sequences in one merged call; a larger request runs alone
    # How long a non-full batch waits for more requests (0: an idle model starts at once).
    batch_max_delay_ms: float = Field(default=0.0, ge=0.0)
    # Work per ONNX Runtime call: a sequence longer than chunk_steps runs in time chunks of that many
    # steps, its states carried (exact); one call holds at most call_max_steps sequences x padded steps,
    # which bounds the memory of the largest request. Sequences are grouped by length, so padding
    # never costs more than a quarter of the real steps.
    chunk_steps: int = Field(default=1024, ge=1)
    call_max_steps: int = Field(default=32768, ge=1)
    # Answer POST /predict straight from ASGI, before FastAPI's routing and dependencies (faster).
    # Off: FastAPI serves it, so middleware added to the app sees it too.
    fast_path: bool = True
    # Slow and greedy clients, per worker: seconds to send a request's headers (408 and close
    # beyond), seconds to send its body once the headers are in (408), header bytes (431 beyond),
    # and open connections (503 beyond).
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=10.0, gt=0)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    max_connections: int = Field(default=1024, ge=1)
    # Where `python -m service` listens.
    host: str = "127.0.0.1"
    # uvicorn worker processes, each with its own model and batcher (None: one per core, at most 4).
    # On a GPU one worker batches best.
    workers: int | None = Field(default=None, ge=1)
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["json", "text"] = "json"  # json: one object per line, one line per request
    # Serve the interactive API docs at /docs and /redoc.
    docs: bool = True
    # API keys, comma-separated. When set, every route but health and metrics needs
    # `Authorization: Bearer <key>`.
    api_keys: Annotated[list[str], NoDecode] = Field(default=[], repr=False)
    # Origins allowed by CORS, comma-separated ("*" for any); none: CORS off.
    cors_origins: Annotated[list[str], NoDecode] = []
    # Prometheus metrics at /metrics.
    metrics: bool = True

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _share_the_cores(self) -> Settings:
        cores = available_cpus()
        if self.workers is None:
            self.workers = min(cores, 4)
        if self.intra_op_threads is None:
            self.intra_op_threads = max(1, cores // self.workers)
        return self


def available_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 quota (a container's --cpus)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


@lru_cache
def get_settings() -> Settings:
    return Settings()
