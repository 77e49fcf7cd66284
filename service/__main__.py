"""``python -m service``: serve the configured model with uvicorn (settings from LSTM_* variables)."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from .settings import get_settings


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    s = get_settings()
    logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn drains on SIGTERM, then re-raises it under the handler found at start: this one, so a
    # requested stop exits 0 (also when it comes before uvicorn is listening).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run("service.app:app", host=s.host, port=s.port, log_level=s.log_level, workers=s.workers)


if __name__ == "__main__":
    main()
