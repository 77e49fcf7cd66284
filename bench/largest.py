"""The largest requests the default limits allow, one shape family at a time: peak memory of the serving
process, time, and what padding costs.

Each family runs on a fresh server (one worker, so its process is the one measured) at the default
limits: 256 sequences, 10,000 steps each, 2,000,000 values, a 16 MiB body. Reported per family: the
body's size, the worker's peak RSS (VmHWM) and its RSS after the requests (what stays resident), and
the best of three request times. ``padding`` compares one 10,000-step sequence beside 255 one-step
ones with the two sent apart: near 1 means padding costs nothing.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

PY = sys.executable
MAX_STEPS, MAX_SEQS, MAX_VALUES = 10_000, 256, 2_000_000


def _status(pid: int) -> tuple[float, float]:
    """Peak and current RSS in MB of the server's worker (the process itself with one worker and no children)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    worker = [int(c) for c in children if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]
    text = Path(f"/proc/{worker[0] if worker else pid}/status").read_text()
    hwm = re.search(r"VmHWM:\s+(\d+) kB", text)
    rss = re.search(r"VmRSS:\s+(\d+) kB", text)
    assert hwm and rss
    return int(hwm.group(1)) / 1024, int(rss.group(1)) / 1024


def _rows(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    start = int(rng.integers(0, max(1, len(rows) - n + 1)))
    return np.resize(rows[start:], (n, rows.shape[1]))


def families(rows: np.ndarray, meta: dict[str, Any]) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """name -> (route, body, headers)."""
    rng = np.random.default_rng(0)
    per_seq = MAX_VALUES // (MAX_SEQS * rows.shape[1])  # 1,953 steps: 256 of them hold 2,000,000 values
    dump = lambda doc: orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)  # noqa: E731
    many = [_rows(rows, per_seq, rng) for _ in range(MAX_SEQS)]
    x = np.stack(many).astype(np.float32)
    binary_header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
            ]
        }
    )
    json_doc = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel()}]}
    infer = f"/v2/models/{meta['name']}/infer"
    return {
        "one long sequence (1 x 10,000 steps)": ("/predict", dump({"inputs": [_rows(rows, MAX_STEPS, rng)]}), {}),
        "many short (256 x 1,953 steps, 2,000,000 values)": ("/predict", dump({"inputs": many}), {}),
        "mixed (1 x 10,000 + 255 x 1 steps)": (
            "/predict",
            dump({"inputs": [_rows(rows, MAX_STEPS, rng)] + [_rows(rows, 1, rng) for _ in range(255)]}),
            {},
        ),
        "mixed long (49 x 10,000 + 207 x 8 steps)": (
            "/predict",
            dump(
                {"inputs": [_rows(rows, MAX_STEPS, rng) for _ in range(49)] + [_rows(rows, 8, rng) for _ in range(207)]}
            ),
            {},
        ),
        "/v2 JSON data, x [256, 1953, 4]": (infer, dump(json_doc), {}),
        "/v2 binary data, x [256, 1953, 4]": (
            infer,
            binary_header + x.tobytes(),
            {"Inference-Header-Content-Length": str(len(binary_header))},
        ),
        "explain (1 x 1,024 steps)": ("/predict", dump({"inputs": [_rows(rows, 1024, rng)], "explain": True}), {}),
    }


def _best(post: Callable[[], httpx.Response], times: int = 3) -> float:
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        r = post()
        best = min(best, time.perf_counter() - start)
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
    return best


def measure(server: Any, rows: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """``server``: bench.run.server (a context manager giving url and pid)."""
    out: dict[str, Any] = {}
    env = {"LSTM_WORKERS": "1", "LSTM_LOG_LEVEL": "warning", "LSTM_MODEL_VERSION": str(meta["version"])}
    for name, (route, body, headers) in families(rows, meta).items():
        with server([PY, "-m", "service"], env) as (url, pid), httpx.Client(base_url=url, timeout=120) as http:
            base = _status(pid)[1]
            seconds = _best(
                lambda route=route, body=body, headers=headers: http.post(route, content=body, headers=headers)
            )
            time.sleep(0.3)
            peak, after = _status(pid)
            out[name] = {
                "body_mb": len(body) / 2**20,
                "base_mb": base,
                "peak_mb": peak,
                "after_mb": after,
                "s": seconds,
            }
            print(f"   {name}: peak {peak:.0f} MB, after {after:.0f} MB, {seconds * 1000:.0f} ms", flush=True)
    # What padding costs: the mixed request against its parts sent apart, on one server.
    rng = np.random.default_rng(1)
    long, shorts = _rows(rows, MAX_STEPS, rng), [_rows(rows, 1, rng) for _ in range(255)]
    dump = lambda doc: orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)  # noqa: E731
    with server([PY, "-m", "service"], env) as (url, _), httpx.Client(base_url=url, timeout=120) as http:
        both = _best(lambda: http.post("/predict", content=dump({"inputs": [long, *shorts]})), 5)
        apart = _best(lambda: http.post("/predict", content=dump({"inputs": [long]})), 5) + _best(
            lambda: http.post("/predict", content=dump({"inputs": shorts})), 5
        )
    out["padding"] = {"together_s": both, "apart_s": apart, "ratio": both / apart}
    print(f"   padding: together {both * 1000:.1f} ms, apart {apart * 1000:.1f} ms", flush=True)
    return out
