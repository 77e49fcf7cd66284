"""Server-held sequences' states: the interface (``store``), the embedded SQLite store and the shared
Valkey/Redis store, and ``open_store``, which picks one from ``LSTM_STATE_URL``."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..settings import SHARED_STORES
from .embedded import EmbeddedStore
from .shared import SharedStore
from .store import SequenceStore, Terms

log = logging.getLogger(__name__)


def open_store(url: str, terms: Terms) -> tuple[SequenceStore, Callable[[], None]]:
    """The store ``url`` names, and what to call once it is closed. Empty: a file of this process's own."""
    if url.startswith(SHARED_STORES):
        return SharedStore(url, terms), lambda: None
    if url.startswith("sqlite:///"):
        return EmbeddedStore(Path(url.removeprefix("sqlite://")), terms), lambda: None
    folder = tempfile.mkdtemp(prefix="lstm-state-")
    log.info("server-held sequences are kept in %s, this process's own (LSTM_STATE_URL to share them)", folder)
    return EmbeddedStore(Path(folder) / "sequences.db", terms), lambda: shutil.rmtree(folder, ignore_errors=True)
