"""Metrics, request ids and structured logs."""

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.websockets import WebSocketDisconnect

from service.server.logs import AccessLog, JsonFormatter
from service.settings import Settings

from .conftest import app_client, running_server

ROW = [0.0, 10.0, 5.0, 3.0]


def sample(text: str, metric: str, **labels: str) -> float:
    """The value of one Prometheus sample, by name and labels (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(metric + "{") and not line.startswith(metric + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_cover_requests_latency_inference_batches_queue_rejections_and_model(settings: Settings) -> None:
    with app_client(settings, api_keys=["key-1"]) as c:
        auth = {"Authorization": "Bearer key-1"}
        before = c.get("/metrics").text
        for _ in range(3):
            assert c.post("/predict", json={"inputs": [[ROW] * 4, [ROW]]}, headers=auth).status_code == 200
        assert c.post("/predict", json={"inputs": []}, headers=auth).status_code == 422
        assert c.post("/predict", json={"inputs": [[ROW]]}).status_code == 401
        text = c.get("/metrics").text

    def grew(metric: str, by: float, **labels: str) -> None:
        assert sample(text, metric, **labels) - sample(before, metric, **labels) == by, (metric, labels)

    grew("lstm_requests_total", 3, route="/predict", status="200")
    grew("lstm_requests_total", 1, route="/predict", status="422")
    grew("lstm_requests_total", 1, route="/predict", status="401")
    grew("lstm_request_duration_seconds_count", 5, route="/predict")
    grew("lstm_rejected_requests_total", 1, reason="unauthorized")
    assert (
        sample(text, "lstm_inference_duration_seconds_count") - sample(before, "lstm_inference_duration_seconds_count")
        >= 1
    )
    assert sample(text, "lstm_batch_size_sequences_bucket", le="2.0") > sample(
        before, "lstm_batch_size_sequences_bucket", le="2.0"
    )
    assert "lstm_queue_depth" in text
    assert sample(text, "lstm_model_info", name="tiny", version="1", provider="CPUExecutionProvider") == 1


def test_metrics_of_several_workers_add_up(repo: Path) -> None:
    with running_server(repo, {"LSTM_WORKERS": "2"}) as (url, proc):
        with httpx.Client(base_url=url) as http:
            for _ in range(20):  # new connections: the kernel spreads them over both workers
                assert httpx.post(f"{url}/predict", json={"inputs": [[ROW]]}).status_code == 200
            # A request is counted once its answer is sent: the last one may be a moment behind this scrape.
            deadline = time.monotonic() + 5
            while sample(text := http.get("/metrics").text, "lstm_requests_total", route="/predict", status="200") < 20:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        assert sample(text, "lstm_requests_total", route="/predict", status="200") == 20
        assert sample(text, "lstm_model_info", name="tiny", version="1", provider="CPUExecutionProvider") == 1
        proc.terminate()
        assert proc.wait(20) == 0


def test_a_worker_that_dies_leaves_no_stale_values(repo: Path) -> None:
    """Workers killed with requests in flight: once uvicorn has replaced them, the queue gauge is theirs no more."""
    heavy = {"inputs": [[ROW] * 10_000] * 2, "explain": True}  # about a second in the numpy reference
    env = {"LSTM_WORKERS": "2", "LSTM_EXPLAIN_MAX_VALUES": "1000000"}
    with running_server(repo, env) as (url, proc):
        flights = [threading.Thread(target=_quietly_post, args=(f"{url}/predict", heavy)) for _ in range(4)]
        for t in flights:
            t.start()
        deadline = time.monotonic() + 10
        while sample(httpx.get(f"{url}/metrics").text, "lstm_queue_depth") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sample(httpx.get(f"{url}/metrics").text, "lstm_queue_depth") >= 2
        workers = _workers(proc.pid)
        assert len(workers) == 2
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        for t in flights:
            t.join(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if len(_workers(proc.pid)) == 2 and httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        text = httpx.get(f"{url}/metrics").text
        assert sample(text, "lstm_queue_depth") == 0, [x for x in text.splitlines() if "queue_depth" in x]
        assert sample(text, "lstm_model_info", name="tiny", version="1", provider="CPUExecutionProvider") == 1
        assert httpx.post(f"{url}/predict", json={"inputs": [[ROW]]}).status_code == 200


def _workers(pid: int) -> list[int]:
    """uvicorn's worker processes (not multiprocessing's resource tracker)."""
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [c for c in children if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]


def _quietly_post(url: str, body: dict) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, json=body, timeout=30)


@pytest.mark.parametrize("fast_path", [True, False])
def test_request_id_is_honoured_or_made_and_echoed(settings: Settings, fast_path: bool) -> None:
    with app_client(settings, fast_path=fast_path) as c:
        r = c.post("/predict", json={"inputs": [[ROW]]}, headers={"X-Request-ID": "abc-123.x"})
        assert r.headers["x-request-id"] == "abc-123.x"
        r = c.post("/predict", json={"inputs": []}, headers={"X-Request-ID": "abc-123.y"})
        assert r.status_code == 422 and r.headers["x-request-id"] == "abc-123.y"
        made = c.get("/model").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made)
        for bad in ("has space", "x" * 200, "semi;colon"):
            assert c.get("/model", headers={"X-Request-ID": bad}).headers["x-request-id"] != bad


def test_one_log_line_per_request_without_input_data(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with app_client(settings) as c, caplog.at_level(logging.INFO, logger="service.access"):
        c.post("/predict", json={"inputs": [[[0.0, 12345.678, 5.0, 3.0]]]}, headers={"X-Request-ID": "rid-7"})
    lines = [r for r in caplog.records if r.name == "service.access"]
    assert len(lines) == 1
    formatted = json.loads(JsonFormatter().format(lines[0]))
    assert formatted["request_id"] == "rid-7" and formatted["status"] == 200 and formatted["path"] == "/predict"
    assert formatted["method"] == "POST" and formatted["duration_ms"] > 0
    assert "12345" not in json.dumps(formatted)


def test_the_real_server_logs_json_lines(repo: Path) -> None:
    with tempfile.TemporaryFile() as out:
        with running_server(repo, {"LSTM_WORKERS": "1"}, output=out) as (url, proc):
            httpx.post(f"{url}/predict", json={"inputs": [[[0.0, 9876.5, 5.0, 3.0]]]}, headers={"X-Request-ID": "r-42"})
            proc.terminate()
            assert proc.wait(20) == 0
        out.seek(0)
        text = out.read().decode()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [r for r in records if r.get("request_id") == "r-42"]
    assert len(access) == 1 and access[0]["status"] == 200 and access[0]["logger"] == "service.access"
    assert "9876" not in text
    assert all(line.startswith("{") for line in text.splitlines() if line.strip()), "a log line that is not JSON"


def test_streams_are_counted_and_logged(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with app_client(settings) as c, caplog.at_level(logging.INFO, logger="service.access"):
        before = c.get("/metrics").text
        with c.websocket_connect("/v1/models/tiny/stream") as ws:
            for _ in range(3):
                ws.send_json({"stream": "a", "inputs": [ROW]})
                ws.receive_json()
            ws.send_json({"stream": "a", "inputs": [[True, 1, 2, 3]]})
            with pytest.raises(WebSocketDisconnect):
                ws.receive_json()
        text = c.get("/metrics").text
    assert sample(text, "lstm_stream_messages_total") - sample(before, "lstm_stream_messages_total") == 3
    assert (
        sample(text, "lstm_stream_closes_total", code="1007") - sample(before, "lstm_stream_closes_total", code="1007")
        == 1
    )
    lines = [r for r in caplog.records if r.getMessage() == "stream"]
    assert lines and lines[-1].messages == 3 and lines[-1].close_code == 1007  # type: ignore[attr-defined]


def test_log_time_stamps_are_utc_to_the_millisecond() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("service.access", logging.INFO, "", 0, "request", None, None)
    for created, stamp in [
        (1_700_000_000.25, "2023-11-14T22:13:20.250Z"),
        (1_700_000_001.999, "2023-11-14T22:13:21.999Z"),
    ]:
        record.created, record.msecs = created, (created % 1) * 1000
        assert json.loads(formatter.format(record))["ts"] == stamp


def test_request_lines_of_one_loop_turn_go_out_in_one_write() -> None:
    """With log_config's JSON handler in place, the request log skips LogRecords and writes a turn's lines
    at once; the lines are what the logger would have written."""

    class Writes(io.BytesIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[bytes] = []

        def write(self, data: Any) -> int:
            self.writes.append(bytes(data))
            return super().write(data)

    raw = Writes()
    stream = io.TextIOWrapper(raw, encoding="utf-8", line_buffering=True)
    logger = logging.getLogger("test.access.fast")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.INFO
    access = AccessLog(logger)

    async def turn() -> None:
        for k in range(3):
            access(request_id=f"r{k}", status=200, path="/predict")
        await asyncio.sleep(0)  # the turn ends: its lines go out

    try:
        asyncio.run(turn())
        assert len(raw.writes) == 1
        lines = [json.loads(x) for x in raw.getvalue().splitlines()]
        assert [x["request_id"] for x in lines] == ["r0", "r1", "r2"]
        assert (
            lines[0]["logger"] == "test.access.fast" and lines[0]["msg"] == "request" and lines[0]["ts"].endswith("Z")
        )
        logger.setLevel(logging.WARNING)
        asyncio.run(turn())
        assert len(raw.writes) == 1  # below its level: nothing
    finally:
        logger.removeHandler(handler)
