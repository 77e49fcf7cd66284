"""Logging: one JSON object per line (or plain text), for the service's and uvicorn's loggers."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed in `extra` and belongs in the line.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    _second = -1
    _stamp = ""

    def _ts(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # strftime once a second, not once a line
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))  # Z: UTC
        return f"{self._stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self._ts(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def json_formatter() -> JsonFormatter:
    """The formatter of ``log_config`` (built in every worker). Its lines hold no caller's file and line, and
    no thread or process name: gathering them is turned off, as the Logging HOWTO's "Optimization" section
    describes, since it cost more than writing the line."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return JsonFormatter()


def log_config(level: str, fmt: str) -> dict[str, Any]:
    """A logging.config dict for uvicorn.run: our format on every logger; uvicorn's own access log off
    (RequestContext writes one line per request instead)."""
    formatter = (
        {"()": json_formatter} if fmt == "json" else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
        },
    }
