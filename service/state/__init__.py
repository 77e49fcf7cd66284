"""Server-held sequences' states: the interface (``store``), the embedded SQLite store and the shared
Valkey/Redis store, and ``open_store``, which picks one from ``LSTM_STATE_URL``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .embedded import EmbeddedStore
from .shared import SharedStore
from .store import SequenceStore, Terms

SCHEMES = ("redis://", "rediss://", "valkey://", "valkeys://", "unix://")  # Settings checks the URL


def open_store(url: str, terms: Terms) -> tuple[SequenceStore, Callable[[], None]]:
    """The store ``url`` names, and what to call once it is closed. Empty: a file of this process's own."""
    if url.startswith(SCHEMES):
        return SharedStore(url, terms), lambda: None
    if url.startswith("sqlite:///"):
        return EmbeddedStore(Path(url.removeprefix("sqlite://")), terms), lambda: None
    folder = tempfile.mkdtemp(prefix="lstm-state-")
    return EmbeddedStore(Path(folder) / "sequences.db", terms), lambda: shutil.rmtree(folder, ignore_errors=True)
