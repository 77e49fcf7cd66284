"""Typed errors of the service, free of HTTP: the app maps each to a status code, once."""

from __future__ import annotations

from typing import Any

Loc = tuple[str | int, ...]


def error(loc: Loc, msg: str, type_: str, **ctx: Any) -> dict[str, Any]:
    """One entry of FastAPI's validation error list."""
    entry: dict[str, Any] = {"loc": list(loc), "msg": msg, "type": type_}
    if ctx:
        entry["ctx"] = ctx
    return entry


class InvalidInput(ValueError):
    """The request's content is wrong; ``errors`` names each place at fault (answered 422)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["msg"] if errors else "invalid input")
        self.errors = errors


class PayloadTooLarge(ValueError):
    """The request body exceeds the configured limit (answered 413)."""

    def __init__(self, size: int | None, limit: int) -> None:
        got = f"{size} bytes" if size is not None else "over the limit"
        super().__init__(f"Request body is {got}; the limit is {limit} bytes")
        self.limit = limit


class ModelLoadError(RuntimeError):
    """The model cannot be served: missing, unreadable, corrupt, or not what the service expects."""


class ExplainUnavailable(RuntimeError):
    """The graph is not one whose LSTM weights the explanation can read."""


class ProtocolError(ValueError):
    """An Open Inference Protocol request that is malformed or does not fit the model (answered 400)."""


class UnknownModel(LookupError):
    """No such model or version in the repository (answered 404)."""


class Overloaded(RuntimeError):
    """Too many requests are already admitted (answered 503 with Retry-After)."""


class DeadlineExceeded(RuntimeError):
    """The request ran past its deadline (answered 504)."""


ServiceError = InvalidInput | PayloadTooLarge | ExplainUnavailable | Overloaded | DeadlineExceeded | UnknownModel
SERVICE_ERRORS = (InvalidInput, PayloadTooLarge, ExplainUnavailable, Overloaded, DeadlineExceeded, UnknownModel)


def error_body(exc: ServiceError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, FastAPI-shaped body and headers for a typed error: the one mapping of errors to HTTP."""
    if isinstance(exc, InvalidInput):
        return 422, {"detail": exc.errors}, {}
    if isinstance(exc, PayloadTooLarge):
        return 413, {"detail": [error(("body",), str(exc), "too_large", limit=exc.limit)]}, {}
    if isinstance(exc, Overloaded):
        return 503, {"detail": str(exc)}, {"Retry-After": "1"}
    if isinstance(exc, DeadlineExceeded):
        return 504, {"detail": str(exc)}, {}
    if isinstance(exc, UnknownModel):
        return 404, {"detail": str(exc)}, {}
    detail = [error(("body", "explain"), f"This model cannot be explained: {exc}", "explain_unavailable")]
    return 422, {"detail": detail}, {}
