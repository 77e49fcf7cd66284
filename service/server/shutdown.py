"""Graceful shutdown: on SIGTERM, readiness turns false at once, uvicorn stops accepting
connections, in-flight requests finish, then the process exits 0."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

# Set when a stop signal arrives; /health/ready answers 503 from then on.
DRAINING = threading.Event()


def is_ready(state: Any) -> bool:
    """The one readiness rule, for /health/ready and the Open Inference Protocol's: the models are loaded
    and warmed up (``app.state.ready``), and no stop has arrived."""
    return bool(getattr(state, "ready", False)) and not DRAINING.is_set()


def watch_for_stop() -> None:
    """Chain onto the stop-signal handlers uvicorn installed, so that readiness drops the moment
    a stop arrives, while uvicorn drains. Only the main thread can set handlers (not so under a
    test client, whose app runs in another thread)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            DRAINING.set()
            previous(signum, frame)

        signal.signal(sig, handler)
