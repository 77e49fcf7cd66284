"""Configuration from the environment (prefix ``LSTM_``), read once through ``get_settings()``."""

from __future__ import annotations

import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Not a setting: ``python -m service`` sets it for its workers (a file they share, ``pipeline.control.Journal``).
CONTROL_JOURNAL_ENV = "LSTM_CONTROL_JOURNAL"
# A call on every core (LSTM_WIDE_MIN_STEPS): two threads that meet at every step pay from 8 sequences of 16 steps
# or more (8 x 64: 1.42x), and gain little or lose with fewer sequences or steps (1 x 512: 1.03x; 4 x 32: 0.58x;
# 8 x 4: 0.79x; performance.md); a worker quiet for less than WIDE_QUIET_S may be between two requests.
WIDE_MIN_ROWS = 8
WIDE_MIN_PADDED_STEPS = 16
WIDE_QUIET_S = 0.01
SHARED_STORES = ("redis://", "rediss://", "valkey://", "valkeys://", "unix://")  # LSTM_STATE_URL's Valkey/Redis


def _doc(default: Any, text: str, shown: str | None = None, **constraints: Any) -> Any:
    """A setting: its default, its one description (the settings table in docs/settings.md is made from
    these), and how the table shows a default that is worked out at start-up."""
    extra: dict[str, Any] | None = {"shown": shown} if shown is not None else None
    return Field(default=default, description=text, json_schema_extra=extra, **constraints)


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value (a store URL with its password, say) is never echoed.
    model_config = SettingsConfigDict(
        env_prefix="LSTM_", protected_namespaces=("settings_",), hide_input_in_errors=True
    )

    model_repository: Path = _doc(
        Path("models"),
        "Model repository: `<name>/config.pbtxt`, `<name>/<version>/model.onnx` and `metadata.json`; every "
        "model in it is served, in the versions its `version_policy` names (Triton's rule; none: the latest).",
    )
    model_name: str | None = _doc(None, "The default model, behind `/predict` and `/model`.", "the only model")
    model_version: int | None = _doc(
        None, "The default model's version.", "the highest serving that is not int8 (docs/model.md)", ge=1
    )
    model_control: Literal["none", "poll", "explicit"] = _doc(
        "none",
        "Model changes while serving, as Triton's `--model-control-mode`: `none`, the models loaded at start serve "
        "until the server stops; `poll`, the repository is watched and each changed model loaded again; "
        "`explicit`, models load and unload only on request (`POST /v2/repository/models/<name>/load`, `/unload`). "
        "Every mode loads the whole repository at start.",
    )
    repository_poll_s: float = _doc(
        15.0, "With `LSTM_MODEL_CONTROL=poll`: seconds between two looks at the repository.", gt=0
    )
    provider: Literal["auto", "cuda", "cpu"] = _doc(
        "auto",
        "`auto`: CUDA where ONNX Runtime can use a GPU, else the CPU; `cuda`: refuse to start without one; `cpu`.",
    )
    workers: int | None = _doc(
        None,
        "uvicorn worker processes, each with its own models and batchers (use 1 on a GPU).",
        "one per core, at most 4",
        ge=1,
    )
    intra_op_threads: int | None = _doc(
        None,
        "ONNX Runtime threads within an operator, per worker (0: ONNX Runtime's own choice).",
        "the cores shared out among the workers",
        ge=0,
    )
    inter_op_threads: int = _doc(1, "ONNX Runtime threads across operators.", ge=0)
    wide_min_steps: int = _doc(
        512,
        "With several workers (`python -m service`) on the CPU, a model call of at least this many sequences x "
        f"padded steps (and of {WIDE_MIN_ROWS} sequences and {WIDE_MIN_PADDED_STEPS} steps or more) runs on "
        f"every core when no other worker has had a request in progress for {WIDE_QUIET_S * 1000:g} ms, on a "
        "second ONNX Runtime session per version; 0, or `LSTM_INTRA_OP_THREADS=0`: each call keeps to its worker's "
        "share.",
        ge=0,
    )
    batching: bool = _doc(True, "Merge concurrent requests into one batch for the model.")
    batch_max_size: int = _doc(64, "Sequences in one merged batch (a larger request runs alone).", ge=1)
    batch_max_delay_ms: float = _doc(
        0.0, "How long a non-full batch waits for more requests; 0: an idle model starts at once.", ge=0.0
    )
    inline_max_steps: int = _doc(
        256,
        "A request of at most this many real steps, when it is all a worker has to do, runs on the event "
        "loop instead of the batcher's thread (two thread hand-offs cost more than the model); lowered at start "
        "to what the model runs in 2 ms, so a large model never holds the loop for long; 0: never.",
        ge=0,
    )
    chunk_steps: int = _doc(
        1024,
        "A longer sequence runs in time chunks of this many steps, its states carried from chunk to chunk "
        "(exact: an LSTM is a recurrence).",
        ge=1,
    )
    call_max_steps: int = _doc(
        32768,
        "Sequences x padded steps of one ONNX Runtime call, and real steps of one merged batch: bounds the "
        "memory of the largest request. Sequences are grouped by length, so padding costs at most a "
        "quarter of the real steps.",
        ge=1,
    )
    fast_path: bool = _doc(
        True,
        "Answer the inference routes (`POST /predict`, `/v1/models/.../predict`, `/v2/models/.../infer`) straight "
        "from ASGI, in front of FastAPI; `false`: through FastAPI (so app middleware sees them).",
    )
    state_url: str = _doc(
        "",
        "Where server-held sequences keep their states: `redis://host:6379/0` (or `valkey://`) for a Valkey or "
        "Redis that every replica shares; `sqlite:///path/to/file.db` for a file this machine's servers share "
        "and a restart keeps; empty: a file of this server's own, gone when it stops.",
        "a file of this server's own",
        repr=False,  # it may hold a password
    )
    sequence_idle_s: float = _doc(
        3600.0, "A server-held sequence without a chunk for this long expires (and says so for as long again).", gt=0
    )
    max_sequences: int = _doc(100_000, "Server-held sequences live at once, per store (429 beyond).", ge=1)
    max_batch_size: int = _doc(256, "Sequences per request.", ge=1)
    max_steps: int = _doc(10_000, "Steps per sequence.", ge=1)
    max_total_values: int = _doc(
        2_000_000, "Numbers in `inputs` (`x` on `/v2`), all sequences together, real steps only.", ge=1
    )
    max_body_bytes: int = _doc(
        16 * 1024 * 1024, "Request body or WebSocket message size (413 or 1009 beyond).", ge=1024
    )
    max_queue: int = _doc(
        256,
        "Requests admitted at once per worker, every protocol and model together, counted from before the "
        "body is read (uploading, decoding, queued or running); 503 with `Retry-After` beyond.",
        ge=1,
    )
    request_timeout_s: float = _doc(
        30.0,
        "Deadline of one request from its admission, reading the body included: 504 beyond, its queued work "
        "dropped. Also the drain time on SIGTERM.",
        gt=0,
    )
    header_timeout_s: float = _doc(
        10.0, "Seconds a client has to send a request's headers (408 and the connection closed beyond).", gt=0
    )
    body_timeout_s: float = _doc(10.0, "Seconds a client has to send a request's body (408 beyond).", gt=0)
    max_header_bytes: int = _doc(16 * 1024, "Size of a request's headers (431 and closed beyond).", ge=1024)
    max_connections: int = _doc(1024, "Open connections per worker (503 beyond).", ge=1)
    explain_max_values: int = _doc(
        131_072, 'With `"explain": true`: steps (all sequences) x layers x hidden units.', ge=1
    )
    stream_max_connections: int = _doc(
        256,
        "WebSocket stream connections per worker (close 1013 beyond), and as many gRPC `ModelStreamInfer` streams "
        "(RESOURCE_EXHAUSTED beyond).",
        ge=1,
    )
    stream_max_streams: int = _doc(
        64, "Streams held by one WebSocket connection, given-state streams included (close 1008 beyond).", ge=1
    )
    stream_idle_s: float = _doc(
        300.0, "Seconds without a message before a WebSocket connection is closed (1000), or a gRPC stream ended.", gt=0
    )
    host: str = _doc("127.0.0.1", "Where `python -m service` listens.")
    port: int = _doc(8000, "Its port.", ge=0, le=65535)
    grpc_port: int | None = _doc(
        None,
        "The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`) on this port, served by every "
        "worker; off unless set (a port of its own, opened on purpose).",
        "off",
        ge=1,
        le=65535,
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = _doc(
        "info", "`info` logs one line per request."
    )
    log_format: Literal["json", "text"] = _doc("json", "`json` (one object per line) or `text`.")
    docs: bool = _doc(True, "Serve `/docs`, `/redoc` and `/openapi.json`.")
    ui: bool = _doc(
        True,
        "Serve the page at `/ui`: a forecast streamed chunk by chunk with its intervals, and the gates as heat maps.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default=[],
        repr=False,
        description="Comma-separated keys; when set, every route but health (`/health/*`, `/v2/health/*`), "
        "metrics and the page's own files (`/ui`) needs `Authorization: Bearer <key>` (a WebSocket handshake may "
        "offer it as the subprotocol `lstm.bearer.<base64url key>`).",
        json_schema_extra={"shown": "none"},
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Comma-separated origins allowed by CORS (`*` for any).",
        json_schema_extra={"shown": "none (CORS off)"},
    )
    metrics: bool = _doc(True, "Prometheus metrics at `/metrics`.")

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _visible_ascii(cls, value: list[str]) -> list[str]:
        # What every client can send alike: an HTTP header, a browser's fetch, a WebSocket subprotocol (base64url).
        if any(not re.fullmatch(r"[\x21-\x7e]+", key) for key in value):
            raise ValueError("each key should be visible ASCII: no spaces, no other characters")
        return value

    @field_validator("state_url")
    @classmethod
    def _a_store(cls, value: str) -> str:
        if value and not value.startswith((*SHARED_STORES, "sqlite:///")):
            raise ValueError("should be empty, redis://..., valkey://... or sqlite:///path")
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


def markdown() -> str:
    """The settings table of docs/settings.md, from the fields above: ``python -m service.settings``."""
    lines = [
        "# Settings",
        "",
        "Environment variables, prefix `LSTM_`. Generated from `service/settings.py` by `make docs`; "
        "`tests/test_docs.py` checks that it is current.",
        "",
        "| variable | default | meaning |",
        "| --- | --- | --- |",
    ]
    for name, f in Settings.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        shown = extra.get("shown")
        if shown is None:
            default = f.default
            shown = f"`{str(default).lower() if isinstance(default, bool) else default}`"
        lines.append(f"| `LSTM_{name.upper()}` | {shown} | {f.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
