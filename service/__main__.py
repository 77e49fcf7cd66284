"""``python -m service``: serve the configured model with uvicorn (settings from LSTM_* variables).

Before any worker starts, every model is loaded once: a missing, unreadable or corrupt model, or one
whose inputs are not what the service drives, stops start-up with one error line and exit code 2; so does a
gRPC port (``LSTM_GRPC_PORT``) another process holds, or a trace exporter this server cannot use
(``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_PROTOCOL``, ``OTEL_PROPAGATORS``, the SDK's own variables).
"""

from __future__ import annotations

import logging
import logging.config
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from types import FrameType

import uvicorn

from .model.errors import ModelLoadError
from .pipeline import cores
from .server.logs import log_config
from .settings import CONTROL_JOURNAL_ENV, get_settings

STARTUP_FAILURE = 2
log = logging.getLogger("service")


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def preflight() -> None:
    from . import tracing
    from .model import repository
    from .model.engine import Engine

    s = get_settings()
    tracing.check()
    if s.grpc_port is not None:
        # The workers open it with SO_REUSEPORT, which would share it with any other server of this user: a
        # port already taken is refused here, once, instead.
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((s.host, s.grpc_port))
            except OSError as e:
                raise OSError(f"LSTM_GRPC_PORT {s.grpc_port} on {s.host}: {e.strerror or e}") from None
    repository.resolve(s.model_repository, s.model_name, s.model_version)  # the default model exists
    # auto cannot fail on the provider: check every model on the CPU, leaving the GPU to the workers.
    provider = "cpu" if s.provider == "auto" else s.provider
    for name in repository.model_names(s.model_repository):
        for version in repository.versions(s.model_repository, name):
            Engine.load(s.model_repository / name / str(version), provider, 1, 1)


def main() -> int:
    s = get_settings()
    config = log_config(s.log_level, s.log_format)
    logging.config.dictConfig(config)
    try:
        preflight()
    except (ModelLoadError, OSError, ValueError) as e:
        log.error("cannot serve: %s", e)
        return STARTUP_FAILURE
    folders = []  # made for this server's workers, removed when it stops
    if s.metrics and (s.workers or 1) > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Every worker writes its metrics here; /metrics adds them up (set before they import prometheus).
        folders.append(tempfile.mkdtemp(prefix="lstm-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folders[-1]
    if s.model_control == "explicit" and (s.workers or 1) > 1 and not os.environ.get(CONTROL_JOURNAL_ENV):
        # A load or unload answered by one worker is written here; the others follow it.
        folders.append(tempfile.mkdtemp(prefix="lstm-control-"))
        os.environ[CONTROL_JOURNAL_ENV] = f"{folders[-1]}/journal.json"
    if s.wide_min_steps and (s.workers or 1) > 1 and not os.environ.get(cores.BOARD_ENV):
        # Each worker posts its requests in progress here; a large model call takes every core only when the
        # others post none.
        folders.append(tempfile.mkdtemp(prefix="lstm-cores-"))
        cores.make(Path(folders[-1]), s.workers or 1)
        os.environ[cores.BOARD_ENV] = folders[-1]
    if not s.state_url:
        # Server-held sequences: one file every worker of this server opens (and the app, when it runs in
        # this process: the settings are read again), gone when the server stops.
        folders.append(tempfile.mkdtemp(prefix="lstm-state-"))
        os.environ["LSTM_STATE_URL"] = f"sqlite://{folders[-1]}/sequences.db"
        get_settings.cache_clear()
    # The WebSocket layer re-reads a handshake's headers with limits of its own (a line of 8 KB, 128 headers); over
    # them it neither answers nor closes, holding a connection slot forever. Raised to what the headers may hold
    # (service.server.protocol refuses more with a 431), for the workers, which read them at import.
    os.environ.setdefault("WEBSOCKETS_MAX_LINE_LENGTH", str(s.max_header_bytes))
    os.environ.setdefault("WEBSOCKETS_MAX_NUM_HEADERS", str(s.max_header_bytes // 4))
    # uvicorn drains on SIGTERM, then re-raises it under the handler found at start: this one, so a
    # requested stop exits 0 (also when it comes before uvicorn is listening).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    from .server.protocol import GuardedHttpToolsProtocol

    try:
        uvicorn.run(
            "service.app:app",
            host=s.host,
            port=s.port,
            workers=s.workers,
            log_config=config,
            access_log=False,  # service.server.middleware.RequestContext logs each request
            timeout_graceful_shutdown=math.ceil(s.request_timeout_s),  # in-flight requests may finish
            http=GuardedHttpToolsProtocol,  # header deadline and size cap
            limit_concurrency=s.max_connections,  # 503 beyond, per worker
            ws_max_size=s.max_body_bytes + 1024,  # a larger message is refused by the WebSocket layer (1009)
        )
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
