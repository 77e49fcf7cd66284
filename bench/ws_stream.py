"""W3 over the WebSocket stream: one connection, one stream of 20-step chunks, each sent when the previous
answer came back (the server keeps the states). Starts the stream over after the last chunk. A lean client
(websockets' synchronous one), so that it takes as little of the two cores as wrk does."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
from websockets.sync.client import connect


def run(url: str, model: str, chunks: list[bytes], seconds: float) -> dict[str, Any]:
    """Figures in wrk's shape: requests, duration_us, p50_us, p99_us, mean_us, errors, non2xx."""
    ws_url = url.replace("http://", "ws://") + f"/v1/models/{model}/stream"
    messages = [b'{"stream":"w3","inputs":' + c + b"}" for c in chunks]
    reset = b'{"stream":"w3","reset":true}'
    times: list[float] = []
    errors = 0
    with connect(ws_url, max_size=None, compression=None) as ws:
        for m in messages[:20]:  # warm-up
            ws.send(m.decode())
            ws.recv()
        ws.send(reset.decode())
        ws.recv()
        start = time.perf_counter()
        end = start + seconds
        i = 0
        while time.perf_counter() < end:
            t = time.perf_counter()
            ws.send(messages[i].decode())
            answer = orjson.loads(ws.recv())
            times.append(time.perf_counter() - t)
            errors += "outputs" not in answer
            i += 1
            if i == len(messages):
                ws.send(reset.decode())
                ws.recv()
                i = 0
        duration = time.perf_counter() - start
    us = np.array(times) * 1e6
    return {
        "requests": len(times),
        "duration_us": duration * 1e6,
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "mean_us": float(us.mean()),
        "errors": errors,
        "non2xx": 0,
    }
