"""The page at ``/ui`` (``LSTM_UI``): plain HTML, CSS and a script, served from this folder, no CDN.

The page itself is static and open; what it shows comes through the API with the user's key: the models
(``/v1/models``), a window of a model's own data (``/ui/data/{name}``, the feature columns of the CSV its
metadata names, when the server can read it), and the forecast over the WebSocket stream, chunk by chunk, with
``forecast`` and ``explain`` (a browser sends the key as a subprotocol: ``server.middleware.KEY_SUBPROTOCOL``).
"""

from __future__ import annotations

import csv
import functools
import math
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from ..pipeline.errors import UnknownModel
from ..protocols.rest_routes import RegistryDep

PAGES = {"/ui": ("index.html", "text/html"), "/ui/app.js": ("app.js", "text/javascript"),
         "/ui/style.css": ("style.css", "text/css")}  # fmt: skip
CSP = "default-src 'self'; connect-src 'self'; frame-ancestors 'none'"  # nothing from elsewhere, not framed
MAX_DATA_BYTES = 8 * 1024 * 1024  # a model's data file larger than this is not offered
MAX_ROWS = 5000  # the last rows of it, at most

router = APIRouter(include_in_schema=False)


@functools.cache
def _page(file: str) -> bytes:
    return files(__package__ or "service.ui").joinpath(file).read_bytes()


def _static(path: str) -> Any:
    file, media = PAGES[path]

    async def page() -> Response:
        headers = {
            "content-security-policy": CSP,
            "x-content-type-options": "nosniff",
            "cache-control": "no-cache",
        }
        return Response(_page(file), media_type=media, headers=headers)

    return page


for _path in PAGES:
    router.add_api_route(_path, _static(_path), methods=["GET"])


@router.get("/ui/data/{name}")
def data(name: str, registry: RegistryDep, request: Request) -> JSONResponse:
    """The last ``MAX_ROWS`` rows of the model's own data: its feature columns, and ``date`` if there is one. A
    relative path is the repository's parent's (``models/`` beside ``data/``). Read in a worker thread, once per
    file change."""
    try:
        spec = registry.get(name, None).engine.spec
    except UnknownModel as e:
        raise HTTPException(404, str(e)) from None
    source = (spec.metadata.get("training") or {}).get("data")
    rows = None
    if isinstance(source, str):
        path = Path(request.app.state.settings.model_repository).parent / source
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp is not None:
            rows = _read(path, tuple(spec.feature_names), stamp)
    if rows is None:
        raise HTTPException(404, f"no data of model {name} on this server: paste a CSV instead")
    dates, values = rows
    return JSONResponse({"model": name, "columns": spec.feature_names, "dates": dates, "rows": values})


@functools.lru_cache(maxsize=8)
def _read(path: Path, columns: tuple[str, ...], stamp: int) -> tuple[list[str], list[list[float]]] | None:
    """The named columns of a CSV as numbers (None if it is not there, too large, or not such a CSV)."""
    try:
        if path.suffix != ".csv" or not path.is_file() or path.stat().st_size > MAX_DATA_BYTES:
            return None
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not set(columns) <= set(reader.fieldnames or ()):
                return None
            rows = list(reader)[-MAX_ROWS:]
        values = [[float(r[c]) for c in columns] for r in rows]
    except (OSError, ValueError, UnicodeDecodeError, csv.Error):
        return None
    if not all(math.isfinite(v) for row in values for v in row):
        return None
    return [r.get("date", "") or "" for r in rows], values
