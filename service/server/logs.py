"""Logging: one JSON object per line (or plain text), for the service's and uvicorn's loggers."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed in `extra` and belongs in the line.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


class Stamp:
    """ISO 8601 time stamps in UTC to the millisecond; strftime once a second, not once a line."""

    _second = -1
    _text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._text}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stamp = Stamp()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.stamp(record.created),
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


CLIENT_TRACE_WARNINGS = (
    "opentelemetry.trace.propagation.tracecontext",
    "opentelemetry.trace.span",
    "opentelemetry.baggage.propagation",
)


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
            # What a client's trace headers may make OpenTelemetry warn of (too long, too many entries): a
            # line per request that anyone could fill the log with. Such a header is ignored either way.
            **{name: {"level": "ERROR"} for name in CLIENT_TRACE_WARNINGS},
        },
    }


class AccessLog:
    """The request log: one line per request, as the ``service.access`` logger would write it.

    When the logging in place is this module's JSON to a stream (``log_config``, what ``python -m service``
    sets up) the line is made here and written with the others of the same event-loop turn, in one write:
    building a LogRecord and writing each line alone cost a third of a small request's time under load.
    Any other logging set-up (a handler of its own, a test capturing records, text format) gets the lines
    through the logger, as before."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.lines: list[bytes] = []
        self.stamp = Stamp()

    def __call__(self, **fields: Any) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        stream = _json_stream(self.logger)
        if stream is None:
            self.logger.info("request", extra=fields)
            return
        created = time.time()
        head = {"ts": self.stamp(created), "level": "info", "logger": self.logger.name, "msg": "request"}
        self.lines.append(orjson.dumps({**head, **fields}, default=str) + b"\n")
        if len(self.lines) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush, stream)
            except RuntimeError:  # no event loop: now
                self.flush(stream)

    def flush(self, stream: Any) -> None:
        text, self.lines = b"".join(self.lines), []
        try:
            if hasattr(stream, "buffer"):  # a text stream: its bytes underneath, no decoding
                stream.buffer.write(text)
            else:
                stream.write(text.decode())
            stream.flush()
        except (OSError, ValueError):  # the stream is gone (closed at exit): the lines are lost, as logging's would be
            pass


def _json_stream(logger: logging.Logger) -> Any:
    """The stream this logger's records reach when the one handler they reach is a stream handler with the
    JSON formatter (``log_config``'s), or None when the logging in place is any other."""
    handlers: list[logging.Handler] = []
    node: logging.Logger | None = logger
    while node is not None:
        handlers += node.handlers
        if not node.propagate:
            break
        node = node.parent
    if len(handlers) != 1 or logger.filters:
        return None
    handler = handlers[0]
    if (
        type(handler) is not logging.StreamHandler
        or not isinstance(handler.formatter, JsonFormatter)
        or handler.filters
    ):
        return None
    return handler.stream
