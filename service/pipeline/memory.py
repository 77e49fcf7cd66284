"""Giving memory back to the system after a large request.

glibc's allocator keeps freed memory in its arenas (one per thread that allocated), so one large
body decoded in a worker thread would leave the process that much larger for good. ``trim`` asks
glibc to return what is free; ONNX Runtime's own arena is shrunk by the engine (``model.engine``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

LARGE_BODY_BYTES = 1 << 20  # after a request with a larger body, free memory goes back to the system


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


_TRIM = _malloc_trim()


def trim() -> None:
    if _TRIM is not None:
        _TRIM(0)
