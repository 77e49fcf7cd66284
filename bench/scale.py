"""Throughput of 1, 2 and 3 replicas behind HAProxy (deploy/fleet.py), and of one replica without it, in
one run: what the load balancer costs and what replicas gain on this machine. ``make scale-test`` runs it
after the fleet's correctness tests; results go to bench/results/scale.{json,md}.

Each replica has one worker (so replicas and processes are the same count); the load is W1 (1 x 32 steps,
states given: every request independent, as chunks of many streams with returned states are) from wrk at
concurrency 32, and W3seq-like server-held chunks are left to the correctness test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from deploy.fleet import fleet

from .run import BENCH, MODEL, make_bodies, wrk

CONNECTIONS = 32


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per run")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    meta = json.loads((MODEL / "metadata.json").read_text())
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        files = make_bodies(Path(tmp), meta)
        for replicas in (1, 2, 3):
            with fleet(replicas) as f:
                targets = [("through HAProxy", f.url)]
                if replicas == 1:
                    targets.insert(0, ("direct, no load balancer", f.replicas[0].url))
                for how, url in targets:
                    wrk(url, "W1", 4, 2, files, meta)  # warm-up
                    r = wrk(url, "W1", CONNECTIONS, args.seconds, files, meta)
                    runs.append({"replicas": replicas, "how": how, **r})
                    print(
                        f"{replicas} replica(s), {how}: {r['rps']:,.0f} req/s, p50 {r['p50_us'] / 1000:.2f} ms, "
                        f"p99 {r['p99_us'] / 1000:.2f} ms, errors {r['errors'] + r['non2xx']}",
                        flush=True,
                    )
    res = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "seconds": args.seconds,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "scale.md").write_text(markdown(res))
    print(markdown(res))
    return 0


def markdown(res: dict[str, Any]) -> str:
    direct = next(r["rps"] for r in res["runs"] if r["how"].startswith("direct"))
    lines = [
        "# Replicas behind HAProxy",
        "",
        f"{res['when']}, {res['machine']}; W1 (1 x 32 steps, states given) from wrk at concurrency {CONNECTIONS},",
        f"{res['seconds']} s per run; one worker per replica; everything on 127.0.0.1 (`make scale-test`).",
        "",
        "| replicas | path | requests/s | vs one replica direct | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in res["runs"]:
        lines.append(
            f"| {r['replicas']} | {r['how']} | {r['rps']:,.0f} | {r['rps'] / direct:.2f}x | "
            f"{r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | {r['errors'] + r['non2xx']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
