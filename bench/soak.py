"""``make soak``: a bounded overload test on 127.0.0.1 (60 s by default).

Measures the service's capacity on W1 (stream chunks, concurrency 32), then offers about twice
that for the soak's length: many paced wrk connections, more than the admission limit lets in.
Reports requests served, 503s (shed load, by design), any other error (must be 0), the p99
latency of admitted requests (from the service's own request log), and the RSS growth of each
worker (must stay under 50 MB). Exits non-zero when a must is broken.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from .run import BENCH, MODEL, make_bodies, server, wrk

ROOT = BENCH.parent


def rss_mb(pid: int) -> dict[int, float]:
    """Current RSS of each worker (the children of the uvicorn supervisor)."""
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()] or [pid]
    out = {}
    for child in children:
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out[child] = int(line.split()[1]) / 1024
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--max-queue", type=int, default=32, help="LSTM_MAX_QUEUE of the soaked service")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "soak.json")
    args = parser.parse_args()
    meta = json.loads((MODEL / "metadata.json").read_text())
    with tempfile.TemporaryDirectory() as tmp, tempfile.NamedTemporaryFile("w+b", suffix=".log") as log:
        files = make_bodies(Path(tmp), meta)
        env = {"LSTM_LOG_LEVEL": "info", "LSTM_MAX_QUEUE": str(args.max_queue)}
        with server([sys.executable, "-m", "service"], env, output=log) as (url, pid):
            wrk(url, "W1", 32, 3, files)  # warm-up
            capacity = wrk(url, "W1", 32, 8, files)["rps"]
            offered = 2 * capacity
            delay_ms = max(0, int(1000 * args.connections / offered))
            print(f"capacity {capacity:,.0f} req/s; offering about {offered:,.0f} req/s for {args.seconds} s "
                  f"({args.connections} connections, {delay_ms} ms apart each)", flush=True)  # fmt: skip
            log.seek(0, os.SEEK_END)
            soak_from = log.tell()
            rss_before = rss_mb(pid)
            samples: list[dict[int, float]] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(5):
                    samples.append(rss_mb(pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            env_wrk = {**os.environ, "BENCH_DIR": str(BENCH), "BODY_FILE": str(files["W1"]),
                       "SOAK_DELAY_MS": str(delay_ms)}  # fmt: skip
            cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--timeout", "10s",
                   "-s", str(BENCH / "soak.lua"), url]  # fmt: skip
            done = subprocess.run(cmd, env=env_wrk, capture_output=True, text=True, timeout=args.seconds + 60)
            stop.set()
            rss_after = rss_mb(pid)
        summary = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("WRK_JSON "))[9:])
        statuses = {int(k): v for k, v in json.loads(next(x for x in done.stdout.splitlines()
                                                          if x.startswith("WRK_STATUS "))[11:]).items()}  # fmt: skip
        log.seek(soak_from)
        admitted = [
            rec["duration_ms"]
            for rec in (json.loads(line) for line in log.read().decode().splitlines() if line.startswith("{"))
            if rec.get("path") == "/predict" and rec.get("status") == 200
        ]
    growth = max(rss_after[p] - rss_before.get(p, rss_after[p]) for p in rss_after)
    result = {
        "seconds": args.seconds,
        "capacity_rps": capacity,
        "offered_rps": offered,
        "requests": summary["requests"],
        "served_200": statuses.get(200, 0),
        "shed_503": statuses.get(503, 0),
        "other_errors": sum(v for k, v in statuses.items() if k not in (200, 503)) + summary["errors"],
        "served_rps": statuses.get(200, 0) / args.seconds,
        "admitted_p99_ms": float(np.percentile(admitted, 99)) if admitted else float("nan"),
        "admitted_p50_ms": float(np.percentile(admitted, 50)) if admitted else float("nan"),
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "rss_growth_mb": growth,
        "rss_samples_mb": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples_mb"}, indent=2))
    ok = result["other_errors"] == 0 and growth < 50
    print("soak passed" if ok else "soak FAILED: other errors, or RSS grew by 50 MB or more")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
