"""Load over gRPC for ``make bench``: ``conns`` clients, each on a channel of its own (so that the server's workers,
which share the port, each get some), sending one serialized ``ModelInferRequest`` without pause for ``seconds``.

A separate process (``python -m bench.grpc_load ...``), as wrk is for HTTP; it prints one JSON line with the same
fields as bench/post.lua's: requests, errors, duration_us, p50_us, p99_us. There is no wrk for gRPC: this client
is Python (grpc.aio) and takes its share of the cores, so its figures compare with each other, not with wrk's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import grpc
import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def _client(target: str, body: bytes, until: float, latencies: list[float], errors: list[str]) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out: no client-side (de)serialization
        while time.perf_counter() < until:
            start = time.perf_counter()
            try:
                await call(body)
            except grpc.aio.AioRpcError as e:
                errors.append(e.code().name)
                continue
            latencies.append(time.perf_counter() - start)


async def run(target: str, body: bytes, conns: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    until = start + seconds
    await asyncio.gather(*(_client(target, body, until, latencies, errors) for _ in range(conns)))
    duration = time.perf_counter() - start
    us = np.asarray(latencies) * 1e6 if latencies else np.zeros(1)
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "non2xx": 0,
        "duration_us": duration * 1e6,
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--body", type=Path, required=True, help="a serialized ModelInferRequest")
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    print("GRPC_JSON " + json.dumps(asyncio.run(run(args.target, args.body.read_bytes(), args.conns, args.seconds))))


if __name__ == "__main__":
    main()
