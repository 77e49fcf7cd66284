"""The page at /ui, without a browser: its files, the switch, its data route, and the WebSocket key a browser
sends as a subprotocol (tests/ui/ drives the page in Chromium)."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import socket
from pathlib import Path

import pytest
from starlette.websockets import WebSocketDisconnect

from service.server.middleware import KEY_SUBPROTOCOL, STREAM_SUBPROTOCOL
from service.settings import Settings
from service.ui.routes import CSP

from .conftest import DATA, app_client, running_server

KEY = "ui-key"
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name in the script, not a place it loads from


def bearer(key: str) -> str:
    return KEY_SUBPROTOCOL + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def test_the_page_is_served_open_with_its_script_and_no_outside_source(settings: Settings) -> None:
    with app_client(settings, api_keys=[KEY]) as c:
        for path, kind in (("/ui", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
            r = c.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
            assert r.headers["content-security-policy"] == CSP and r.headers["x-content-type-options"] == "nosniff"
            outside = set(re.findall(r"https?://[^\s\"'`]+", r.text)) - {
                "http://www.w3.org/2000/svg"
            }  # SVG's namespace
            assert not outside  # nothing fetched from elsewhere: no CDN
        assert '<script src="/ui/app.js">' in c.get("/ui").text
        script = c.get("/ui/app.js").text  # the page offers the subprotocols the server takes
        assert f'"{STREAM_SUBPROTOCOL}"' in script and f'"{KEY_SUBPROTOCOL}"' in script
        assert c.get("/ui/data/tiny").status_code == 401  # what the page shows needs the key


def test_the_page_can_be_switched_off(settings: Settings) -> None:
    with app_client(settings, ui=False, api_keys=[KEY]) as c:
        assert c.get("/ui").status_code == 401  # off, its paths are no longer open: nothing is there for anyone
        assert c.get("/ui", headers={"authorization": f"Bearer {KEY}"}).status_code == 404


def test_a_models_data_is_the_feature_columns_of_its_csv(settings: Settings) -> None:
    with app_client(settings) as c:
        doc = c.get("/ui/data/tiny").json()
        assert c.get("/ui/data/nope").status_code == 404
    with DATA.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert doc["columns"] == ["precipitation", "temp_max", "temp_min", "wind"]
    assert len(doc["rows"]) == len(rows) and doc["dates"][-1] == rows[-1]["date"]
    assert doc["rows"][-1] == [float(rows[-1][k]) for k in doc["columns"]]


@pytest.mark.parametrize("source", ["missing.csv", "/etc/passwd", "bad.csv", "../models"])
def test_no_data_where_the_server_cannot_read_it(settings: Settings, repo: Path, tmp_path: Path, source: str) -> None:
    """A data file that is not there, not a CSV, or not the model's columns as numbers: none is served."""
    shutil.copytree(repo, tmp_path / "models")
    meta_path = tmp_path / "models" / "tiny" / "1" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "training": {**meta["training"], "data": source}}))
    (tmp_path / "bad.csv").write_text("precipitation,temp_max,temp_min,wind\n1,2,x,4\n")  # beside models/
    with app_client(settings, model_repository=tmp_path / "models") as c:
        r = c.get("/ui/data/tiny")
    assert r.status_code == 404 and "paste a CSV" in r.json()["detail"]


def test_a_browser_sends_its_key_as_a_subprotocol(settings: Settings) -> None:
    with app_client(settings, api_keys=[KEY]) as c:
        with c.websocket_connect("/v1/models/tiny/stream", subprotocols=["lstm", bearer(KEY)]) as ws:
            assert ws.accepted_subprotocol == "lstm"
            ws.send_json({"inputs": [[0.0, 10.0, 5.0, 3.0]], "forecast": {"horizon": 1}})
            assert "forecast" in ws.receive_json()
        for wrong in (bearer("nope"), "lstm.bearer.%%%", bearer(KEY) + "x"):
            with (
                pytest.raises(WebSocketDisconnect),
                c.websocket_connect("/v1/models/tiny/stream", subprotocols=["lstm", wrong]),
            ):
                pass
        with c.websocket_connect("/v1/models/tiny/stream", headers={"authorization": f"Bearer {KEY}"}) as ws:
            assert ws.accepted_subprotocol is None  # none offered, none chosen
        assert json.loads(c.get("/v1/models/tiny", headers={"authorization": f"Bearer {KEY}"}).text)["horizons"] == {
            "steps": 1,
            "targets": ["temp_max"],
            "quantiles": None,
        }


@pytest.mark.parametrize("size", [9000, 15000])
def test_a_long_handshake_header_is_answered_not_held(repo: Path, size: int) -> None:
    """A WebSocket handshake whose one header line is longer than the WebSocket layer's own 8 KB (a long key in
    the subprotocol) is answered at once, not left holding a connection slot."""
    with running_server(repo, {"LSTM_WORKERS": "1", "LSTM_API_KEYS": KEY}) as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        handshake = (
            "GET /v1/models/tiny/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: lstm, {KEY_SUBPROTOCOL}{'A' * size}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(handshake.encode())
            answer = raw.recv(200)
        assert answer.startswith(b"HTTP/1.1 403")  # the key is wrong: refused, and said so
        proc.terminate()
        proc.wait(20)


@pytest.mark.parametrize("keys", ["good,with space", "ünïcode", "tab\tkey"])
def test_keys_are_visible_ascii_as_every_client_can_send_them(keys: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="visible ASCII"):
        Settings(api_keys=keys)
