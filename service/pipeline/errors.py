"""The one error model of the request pipeline: typed errors that say what went wrong and where.

Free of any protocol: each protocol renders them once, its own way (``protocols.rest``: FastAPI's
``detail`` with 422 and 413; ``protocols.oip``: ``{"error"}`` with 400; ``protocols.websocket``:
a close code and reason). ``status`` is the HTTP status the error stands for.
"""

from __future__ import annotations

from typing import Any

Loc = tuple[str | int, ...]


def error(loc: Loc, msg: str, type_: str, **ctx: Any) -> dict[str, Any]:
    """One place at fault, in FastAPI's validation error shape."""
    entry: dict[str, Any] = {"loc": list(loc), "msg": msg, "type": type_}
    if ctx:
        entry["ctx"] = ctx
    return entry


def where(loc: list[str | int] | Loc) -> str:
    """A location in one word: ``inputs.0.3``, ``h0``; REST's prefix ``body`` left out."""
    parts = loc[1:] if loc and loc[0] == "body" else loc
    return ".".join(str(p) for p in parts) or "body"


class ServiceError(Exception):
    status = 500
    headers: dict[str, str] = {}  # noqa: RUF012 (read-only per class)


class InvalidInput(ServiceError, ValueError):
    """The request's content is wrong; ``errors`` names each place at fault."""

    status = 422

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["msg"] if errors else "invalid input")
        self.errors = errors

    def lines(self) -> str:
        """Every place at fault, as one line of text."""
        return "; ".join(f"{where(e['loc'])}: {e['msg']}" for e in self.errors)


class PayloadTooLarge(ServiceError, ValueError):
    """The request body exceeds the configured limit."""

    status = 413

    def __init__(self, size: int | None, limit: int) -> None:
        got = f"{size} bytes" if size is not None else "over the limit"
        super().__init__(f"Request body is {got}; the limit is {limit} bytes")
        self.limit = limit


class BodyTimeout(ServiceError):
    """The client did not send its whole body in time; the connection is closed after the answer."""

    status = 408
    headers = {"Connection": "close"}  # noqa: RUF012


class ClientDisconnected(ServiceError):
    """The client left before its answer was ready: nobody to answer (logged as 499)."""

    status = 499


class TooManySequences(ServiceError):
    """A client holds as many sequences (streams) as it may."""

    status = 429


class SequenceBusy(ServiceError):
    """A chunk of a server-held sequence came while another chunk of it runs."""

    status = 409
    headers = {"Retry-After": "1"}  # noqa: RUF012


class ChunkOutOfOrder(InvalidInput):
    """A numbered chunk of a server-held sequence that is neither its next nor a retry of its last."""

    status = 409


class SequencesFull(ServiceError):
    """As many server-held sequences are live as the store holds."""

    status = 429


class StoreDown(ServiceError):
    """The sequence store cannot be reached: nothing is answered from it."""

    status = 503
    headers = {"Retry-After": "1"}  # noqa: RUF012


class UnknownModel(ServiceError, LookupError):
    """No such model or version in the repository."""

    status = 404


class ModelControlOff(ServiceError):
    """A load or unload asked of a server whose model control mode does not take them."""

    status = 400


class LoadFailed(ServiceError):
    """A model could not be loaded: what was serving serves on, unchanged."""

    status = 400


class ControlIncomplete(ServiceError):
    """A load or unload reached this worker, but not (yet) every worker of the server: the journal they share
    cannot be written, or a worker did not apply it in time."""

    status = 503


class ModelInUse(ServiceError):
    """An unload the documented rule refuses (the default model)."""

    status = 409


class NotReady(ServiceError):
    """The models are still loading (or the server is stopping)."""

    status = 503
    headers = {"Retry-After": "1"}  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__("model not loaded yet")


class Overloaded(ServiceError):
    """Too many requests are already admitted."""

    status = 503
    headers = {"Retry-After": "1"}  # noqa: RUF012


class DeadlineExceeded(ServiceError):
    """The request ran past its deadline; its queued work is dropped."""

    status = 504
