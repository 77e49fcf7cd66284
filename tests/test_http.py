"""Slow, greedy and vanishing clients against the real server (service.server.http): header deadline and
size cap, body deadline, uploads counted by admission, a cap on connections, and 499 for a client that left."""

import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from .conftest import running_server

TIMEOUT_S = 1.0
ENV = {
    "LSTM_WORKERS": "1",
    "LSTM_HEADER_TIMEOUT_S": str(TIMEOUT_S),
    "LSTM_BODY_TIMEOUT_S": str(TIMEOUT_S),
    "LSTM_MAX_CONNECTIONS": "8",
    "LSTM_MAX_QUEUE": "2",
    "LSTM_EXPLAIN_MAX_VALUES": "1000000",
}
BODY = orjson.dumps({"inputs": [[[0.5, 11.1, 4.4, 2.8]] * 3]})


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[tuple[str, Path]]:
    with tempfile.NamedTemporaryFile(suffix=".log") as log, running_server(repo, ENV, output=log) as (url, _):
        yield url, Path(log.name)


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def upload_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("sent", [b"", b"GET /health/live HTTP/1.1\r\nHost: t\r\n"], ids=["nothing", "half"])
def test_headers_must_arrive_in_time(server: tuple[str, Path], sent: bytes) -> None:
    url, _ = server
    with connect(url) as sock:
        sock.sendall(sent)
        start = time.monotonic()
        got = answer(sock)  # the server answers 408 and closes
        waited = time.monotonic() - start
    assert got.startswith(b"HTTP/1.1 408") and TIMEOUT_S * 0.8 <= waited < TIMEOUT_S + 5, (got, waited)
    assert httpx.get(f"{url}/health/live").status_code == 200


def test_headers_over_the_cap_are_refused_with_431(server: tuple[str, Path]) -> None:
    url, _ = server
    with connect(url) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        assert answer(sock).startswith(b"HTTP/1.1 431")
    ok = httpx.get(f"{url}/health/live", headers={"x-fine": "a" * 8_000})
    assert ok.status_code == 200


@pytest.mark.parametrize("path", ["/predict", "/v2/models/tiny/infer"])
def test_a_body_that_does_not_arrive_in_time_is_a_408(server: tuple[str, Path], path: str) -> None:
    url, _ = server
    with connect(url) as sock:
        sock.sendall(upload_head(path, len(BODY)) + BODY[:10])
        got = answer(sock)
    assert b" 408 " in got.split(b"\r\n", 1)[0] and b"did not arrive" in got, got


def test_bodies_still_uploading_count_against_admission(server: tuple[str, Path]) -> None:
    url, _ = server
    slow = [connect(url) for _ in range(2)]  # LSTM_MAX_QUEUE=2
    try:
        for sock in slow:
            sock.sendall(upload_head("/predict", len(BODY)) + BODY[:10])
        time.sleep(0.2)
        r = httpx.post(f"{url}/predict", content=BODY, headers={"content-type": "application/json"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        for sock in slow:
            sock.sendall(BODY[10:])
            assert answer_head(sock).startswith(b"HTTP/1.1 200")
    finally:
        for sock in slow:
            sock.close()
    assert httpx.post(f"{url}/predict", content=BODY).status_code == 200


def answer_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_open_connections_are_capped(server: tuple[str, Path]) -> None:
    url, _ = server
    held = [connect(url) for _ in range(8)]  # LSTM_MAX_CONNECTIONS=8
    try:
        time.sleep(0.1)
        with connect(url) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert answer(sock).startswith(b"HTTP/1.1 503")
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{url}/health/live").status_code == 200


HEAVY = orjson.dumps({"inputs": [[[0.5, 11.1, 4.4, 2.8]] * 10_000] * 2, "explain": True})  # about a second


@pytest.mark.parametrize(
    ("path", "sent"),
    [
        ("/predict", BODY[:10]),
        ("/v2/models/tiny/infer", BODY[:10]),
        ("/v1/models/tiny/predict", BODY[:10]),
        ("/predict", HEAVY),  # the whole body: the client leaves while the model works
    ],
    ids=["predict", "v2", "v1", "while-working"],
)
def test_a_client_that_leaves_is_a_499_never_a_5xx(server: tuple[str, Path], path: str, sent: bytes) -> None:
    url, log = server

    def count() -> float:
        text = httpx.get(f"{url}/metrics").text
        lines = [x for x in text.splitlines() if x.startswith("lstm_requests_total{") and 'status="499"' in x]
        return sum(float(x.rsplit(" ", 1)[1]) for x in lines)

    def logged() -> list[dict]:
        return [orjson.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]

    before, seen = count(), len(logged())
    with connect(url) as sock:
        sock.sendall(upload_head(path, len(BODY) if sent is not HEAVY else len(HEAVY)) + sent)
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while count() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count() == before + 1, [(x["path"], x["status"]) for x in logged()[seen:] if "status" in x]
    lines = [x for x in logged()[seen:] if "status" in x]
    assert [x["status"] for x in lines if x["path"] != "/metrics"] == [499], lines


def test_a_client_leaving_while_others_are_served_harms_nobody(server: tuple[str, Path]) -> None:
    url, _ = server
    results: list[int] = []

    def steady() -> None:
        with httpx.Client(base_url=url) as http:
            results.extend(http.post("/predict", content=BODY).status_code for _ in range(20))

    worker = threading.Thread(target=steady)
    worker.start()
    for _ in range(5):
        with connect(url) as sock:
            sock.sendall(upload_head("/predict", len(BODY)) + BODY[:5])
    worker.join(30)
    assert results and set(results) <= {200, 503}


def test_head_pipelined_and_expect_continue_requests_are_answered(server: tuple[str, Path]) -> None:
    url, _ = server
    with connect(url) as sock:  # HEAD: uvicorn sends no body, so the head goes out when the answer completes
        sock.sendall(b"HEAD /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        assert answer_head(sock).startswith(b"HTTP/1.1 ")
    with connect(url) as sock:  # two requests in one packet: two answers, in order
        last = b"GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        sock.sendall(upload_head("/predict", len(BODY)) + BODY + last)
        data = answer(sock)
        assert data.count(b"HTTP/1.1 200 OK") == 2 and data.index(b'"outputs"') < data.rindex(b"HTTP/1.1 200")
    with connect(url) as sock:
        sock.sendall(upload_head("/predict", len(BODY)).replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
        assert answer_head(sock).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(BODY)
        assert answer_head(sock).startswith(b"HTTP/1.1 200 OK")


def test_an_answer_before_the_body_is_read_closes_the_connection(server: tuple[str, Path]) -> None:
    """What is left of a refused body must never be read as the next request: say so, and close."""
    url, _ = server
    with connect(url) as sock:
        sock.sendall(upload_head("/predict", 99_999_999) + b"{")  # refused from Content-Length at once
        data = answer(sock)  # returns when the server closes
    assert data.startswith(b"HTTP/1.1 413") and b"connection: close" in data.lower()
    with connect(url) as sock:  # an unknown model is answered before its body is read, too
        sock.sendall(upload_head("/v1/models/nope/predict", 10_000) + b'{"inputs":')
        data = answer(sock)
    assert data.startswith(b"HTTP/1.1 404") and b"connection: close" in data.lower()


def test_a_pipelined_refusal_waits_for_the_answers_before_it(server: tuple[str, Path]) -> None:
    url, _ = server
    big = b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    with connect(url) as sock:
        sock.sendall(upload_head("/predict", len(BODY)) + BODY + big)
        data = answer(sock)
    assert data.startswith(b"HTTP/1.1 200 OK") and b'"outputs"' in data
    assert data.index(b"HTTP/1.1 431") > data.index(b'"outputs"')


def test_a_pipelined_flood_is_cut_off(server: tuple[str, Path]) -> None:
    url, _ = server
    one = b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n"
    with connect(url) as sock:  # a client pipelining a few requests gets every answer
        sock.sendall(one * 20 + one.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert answer(sock).count(b"HTTP/1.1 200") == 21
    with connect(url) as sock:  # one sending thousands ahead of reading is closed, not queued for
        with contextlib.suppress(OSError):
            sock.sendall(one * 5_000)
        assert answer(sock).count(b"HTTP/1.1 200") < 100
    assert httpx.get(f"{url}/health/live").status_code == 200
