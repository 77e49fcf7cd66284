"""``make bench``: the service against its floors and a naive baseline, side by side, in one run.

Everything listens on 127.0.0.1 only. Load comes from wrk (bench/*.lua), a separate C
process, so no Python client competes with the servers for the two cores.

Workloads (bodies cut from the committed data):
  W1  stream chunks: batch 1, 32 steps, states given; concurrency 1 and 32
  W2  bulk: batch 64, 100 steps; concurrency 4
  W3  one 2,000-step stream in 20-step chunks, sequential, states carried (wrk + stream.lua)
The default server also runs each on /v2 with binary tensors (W1v2, W2v2; W3v2 with stream_v2.lua, the
states passed back as the bytes that came), and W3 over the WebSocket stream (W3ws, bench/ws_stream.py:
the server keeps the states).

The service runs with its defaults (a JSON log line per request, written to a file, metrics on),
with batching off, and with its request log off. Then the largest request of each shape family
the limits allow, each on a fresh server (bench/largest.py): peak memory, time, padding's cost.
Floors: ONNX Runtime in-process (session.run) for each workload's shapes; W2's whole
in-process path (orjson decode, ONNX Runtime, orjson encode); a bare ASGI app that
answers a fixed small JSON (the HTTP floor). Servers: the service with batching on
(its defaults) and off, bench/handrolled.py (FastAPI + ONNX Runtime inline + orjson, one
worker: the bar a user would set) and bench/naive_server.py (FastAPI + PyTorch eager + json).
The default server again with traces on, every request sampled, exported over OTLP/HTTP to a
receiver on 127.0.0.1 (bench/otlp_sink.py), for W1; and in-process, what the trace hooks cost a
request while traces are off.
The service serves version 1 of the shipped model (float32), as the baselines run it; version 2 (int8)
and a larger model in both precisions are measured after (bench/int8.py).
Writes bench/results/results.{json,md} and chart.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson

from . import int8, largest, ws_stream
from .otlp_sink import OtlpSink

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
MODEL = ROOT / "models" / "seattle-weather" / "1"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- workloads
def make_bodies(tmp: Path, meta: dict[str, Any]) -> dict[str, Path]:
    from training.data import load_csv

    rows = load_csv(ROOT / "data" / "seattle-weather.csv", meta["feature_names"], meta["target_names"]).features
    rng = np.random.default_rng(0)
    layers, hidden = meta["num_layers"], meta["hidden_size"]
    states = (rng.standard_normal((2, 1, layers, hidden)) * 0.3).astype(np.float32)
    w1 = {"inputs": [rows[:32]], "h0": states[0], "c0": states[1]}
    w2 = {"inputs": [rows[s : s + 100] for s in rng.integers(0, len(rows) - 100, 64)]}
    stream = np.concatenate([rows, rows])[:2000].astype(np.float32)
    files = {"W1": tmp / "w1.json", "W2": tmp / "w2.json", "W3": tmp / "w3_chunks.txt"}
    files["W1"].write_bytes(orjson.dumps(w1, option=orjson.OPT_SERIALIZE_NUMPY))
    files["W2"].write_bytes(orjson.dumps(w2, option=orjson.OPT_SERIALIZE_NUMPY))
    chunks = [orjson.dumps(stream[i : i + 20], option=orjson.OPT_SERIALIZE_NUMPY) for i in range(0, 2000, 20)]
    files["W3"].write_bytes(b"\n".join(chunks) + b"\n")
    # The same workloads over the Open Inference Protocol with binary tensors (states [layers, batch, hidden]).
    h0, c0 = (np.ascontiguousarray(s.transpose(1, 0, 2)) for s in states)
    files["W1v2"], files["W2v2"], files["W3v2"] = tmp / "w1.bin", tmp / "w2.bin", tmp / "w3_chunks.bin"
    for name, tensors in (
        ("W1v2", {"x": np.asarray(w1["inputs"], np.float32), "h0": h0, "c0": c0}),
        ("W2v2", {"x": np.asarray(w2["inputs"], np.float32)}),
    ):
        header, blobs = binary_request(tensors)
        files[name].write_bytes(header + blobs)
        files[name].with_suffix(".header").write_text(str(len(header)))
    files["W3v2"].write_bytes(stream.tobytes())
    # And over gRPC: serialized ModelInferRequests with raw contents (bench/grpc_load.py sends them as they are).
    for name, tensors in (
        ("W1grpc", {"x": np.asarray(w1["inputs"], np.float32), "h0": h0, "c0": c0}),
        ("W2grpc", {"x": np.asarray(w2["inputs"], np.float32)}),
    ):
        files[name] = tmp / f"{name}.pb"
        files[name].write_bytes(grpc_request(meta["name"], tensors))
    return files


def grpc_request(model: str, tensors: dict[str, np.ndarray]) -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    for name, array in tensors.items():
        request.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
        request.raw_input_contents.append(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return bytes(request.SerializeToString())


def binary_request(tensors: dict[str, np.ndarray]) -> tuple[bytes, bytes]:
    """An Open Inference Protocol request, binary outputs asked for: its JSON header, and the tensors' bytes."""
    inputs = [
        {"name": k, "shape": list(v.shape), "datatype": "FP32", "parameters": {"binary_data_size": v.nbytes}}
        for k, v in tensors.items()
    ]
    header = orjson.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}})
    return header, b"".join(v.astype(np.float32).tobytes() for v in tensors.values())


# ---------------------------------------------------------------- floors
def timed(fn: Any, seconds: float = 2.0) -> dict[str, float]:
    for _ in range(20):
        fn()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    a = np.array(times) * 1e6
    return {"p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)), "mean_us": float(a.mean())}


def in_process_floors(files: dict[str, Path], meta: dict[str, Any], threads: int) -> dict[str, Any]:
    """Each floor with ONNX Runtime on `threads` threads (0: its own choice)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(MODEL / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    layers, hidden, feats = meta["num_layers"], meta["hidden_size"], meta["input_size"]

    def feeds(b: int, t: int) -> dict[str, np.ndarray]:
        z = np.zeros((layers, b, hidden), dtype=np.float32)
        x = np.random.default_rng(0).standard_normal((b, t, feats)).astype(np.float32)
        return {"x": x, "h0": z, "c0": z, "lengths": np.full(b, t, dtype=np.int32)}

    out: dict[str, Any] = {}
    for name, (b, t) in {"W1": (1, 32), "W2": (64, 100), "W3": (1, 20)}.items():
        f = feeds(b, t)
        out[f"ort_{name}"] = timed(lambda f=f: sess.run(None, f))
    body = files["W2"].read_bytes()

    def w2_path() -> None:  # what /predict must do at the least: decode, run, encode
        doc = orjson.loads(body)
        x = np.asarray(doc["inputs"], dtype=np.float32)
        z = np.zeros((layers, len(x), hidden), dtype=np.float32)
        y, hn, cn = sess.run(None, {"x": x, "h0": z, "c0": z, "lengths": np.full(len(x), x.shape[1], np.int32)})
        orjson.dumps({"outputs": y, "hn": hn, "cn": cn}, option=orjson.OPT_SERIALIZE_NUMPY)

    out["inproc_W2_path"] = timed(w2_path)
    return out


def tracing_off_us() -> float:
    """The mean time of every call one request makes to the trace hooks while traces are off."""
    from service import tracing

    assert tracing.TRACER is None

    def hooks() -> None:
        top = tracing.current()  # DataPlane.serve
        top.is_recording()
        with tracing.span("decode"):
            pass
        with tracing.span("infer") as span:
            span.set_attribute("lstm.run", "batched")
            tracing.queued()  # Batcher.predict
        with tracing.span("encode"):
            pass

    return timed(hooks)["mean_us"]


# ---------------------------------------------------------------- servers and load
@contextlib.contextmanager
def server(cmd: list[str], env: dict[str, str], output: IO[bytes] | None = None) -> Iterator[tuple[str, int]]:
    port = free_port()
    full_env = {**os.environ, **env, "LSTM_PORT": str(port), "LSTM_HOST": "127.0.0.1"}
    cmd = [c.replace("{port}", str(port)) for c in cmd]
    url = f"http://127.0.0.1:{port}"
    # Output to a file, not a pipe: a pipe nobody reads blocks the server once full.
    with contextlib.nullcontext(output) if output else tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{cmd} exited: {log.read().decode()[-2000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd} not ready in 90 s")
                time.sleep(0.2)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # any worker left behind


def valkey_server(folder: Path) -> tuple[str, subprocess.Popen[bytes]] | None:
    """A Valkey (or Redis) server on 127.0.0.1 for the shared-store run, if one is installed."""
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return f"redis://127.0.0.1:{port}/0", proc
        time.sleep(0.05)
    proc.kill()
    return None


def peak_rss_mb(pid: int) -> float:
    """The largest peak RSS (VmHWM) of the process and its children (uvicorn's workers)."""
    pids = [pid, *(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    peaks = []
    for p in pids:
        match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        if match:
            peaks.append(int(match.group(1)) / 1024)
    return max(peaks)


def wrk(
    url: str, workload: str, conns: int, seconds: int, files: dict[str, Path], meta: dict[str, Any]
) -> dict[str, Any]:
    """One wrk run. A workload ending in v2 goes to the Open Inference Protocol with binary tensors."""
    body = files.get(workload, files["W3"])  # the stream scripts read CHUNKS_FILE instead
    env = {**os.environ, "BENCH_DIR": str(BENCH), "BODY_FILE": str(body), "CHUNKS_FILE": str(files["W3"])}
    script = "post.lua"
    if workload.endswith("v2"):
        env["BODY_PATH"] = f"/v2/models/{meta['name']}/infer"
        if workload != "W3v2":
            env["HEADER_LENGTH"] = files[workload].with_suffix(".header").read_text()
    if workload == "W3":
        script = "stream.lua"
    elif workload == "W3seq":
        script = "stream_seq.lua"
    elif workload == "W3v2":
        script = "stream_v2.lua"
        env.update(
            CHUNKS_FILE=str(files["W3v2"]),
            CHUNK_BYTES=str(20 * meta["input_size"] * 4),
            SHAPE_X=f"[1,20,{meta['input_size']}]",
            SHAPE_S=f"[{meta['num_layers']},1,{meta['hidden_size']}]",
        )
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(BENCH / script), url]
    return figures(cmd, "WRK_JSON ", seconds, env=env)


def figures(cmd: list[str], tag: str, seconds: int, **run: Any) -> dict[str, Any]:
    """Run a load generator; its one line of figures (after ``tag``), with the requests per second."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, **run)
    line = next((x for x in out.stdout.splitlines() if x.startswith(tag)), None)
    if line is None:
        raise RuntimeError(f"{cmd[0]} gave no figures: {out.stdout}\n{out.stderr}")
    r: dict[str, Any] = json.loads(line[len(tag) :])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def load(
    url: str, workload: str, conns: int, seconds: int, files: dict[str, Path], meta: dict[str, Any]
) -> dict[str, Any]:
    """One run: wrk for HTTP, bench/ws_stream.py for W3 over the WebSocket stream, bench/grpc_load.py for gRPC."""
    if workload.endswith("grpc"):
        cmd = [PY, "-m", "bench.grpc_load", "--target", GRPC_TARGETS[url], "--body", str(files[workload])]
        cmd += ["--conns", str(conns), "--seconds", str(seconds)]
        return figures(cmd, "GRPC_JSON ", seconds, cwd=ROOT)
    if workload != "W3ws":
        return wrk(url, workload, conns, seconds, files, meta)
    chunks = files["W3"].read_bytes().splitlines()
    r = ws_stream.run(url, meta["name"], chunks, seconds)
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


RUNS = [("W1", 1), ("W1", 32), ("W2", 4), ("W3", 1)]
FLOAT = {"LSTM_MODEL_VERSION": MODEL.name}  # the float32 version the baselines run
GRPC_RUNS = [("W1grpc", 1), ("W1grpc", 32), ("W2grpc", 4)]
TRACED = "service, traces on (OTLP, every request)"
GRPC_TARGETS: dict[str, str] = {}  # a server's URL -> its gRPC host:port
PROTOCOL_RUNS = [("W1v2", 1), ("W1v2", 32), ("W2v2", 4), ("W3v2", 1), ("W3ws", 1), ("W3seq", 1)]  # default server only
SERVERS: dict[str, tuple[list[str], dict[str, str], list[tuple[str, int]]]] = {
    "bare ASGI (HTTP floor)": (
        [PY, "-m", "uvicorn", "bench.bare_asgi:app", "--port", "{port}", "--log-level", "warning", "--no-access-log"],
        {},
        [("W1", 1), ("W1", 32)],
    ),
    "service, batching on (default)": ([PY, "-m", "service"], FLOAT, RUNS + PROTOCOL_RUNS),
    "service, batching off": ([PY, "-m", "service"], {**FLOAT, "LSTM_BATCHING": "false"}, RUNS),
    "service, request logs off": (
        [PY, "-m", "service"],
        {**FLOAT, "LSTM_LOG_LEVEL": "warning"},
        [("W1", 1), ("W1", 32)],
    ),
    "hand-rolled FastAPI + ONNX Runtime": (
        [PY, "-m", "uvicorn", "bench.handrolled:app", "--port", "{port}", "--log-level", "warning", "--no-access-log"],
        {},
        RUNS,
    ),
    "naive FastAPI + PyTorch": (
        [
            PY,
            "-m",
            "uvicorn",
            "bench.naive_server:app",
            "--port",
            "{port}",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        {},
        RUNS,
    ),
}


# ---------------------------------------------------------------- report
def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    s, bare, naive, fl = (
        res["servers"]["service, batching on (default)"],
        res["servers"]["bare ASGI (HTTP floor)"],
        res["servers"]["naive FastAPI + PyTorch"],
        res["floors"],
    )
    w1_32, w1_1, w2 = s["W1 c32"], s["W1 c1"], s["W2 c4"]
    worst = max(f["peak_mb"] for name, f in res["largest"].items() if name != "padding")
    hand = res["servers"]["hand-rolled FastAPI + ONNX Runtime"]
    floor_c1 = bare["W1 c1"]["p50_us"] + fl["ort_W1"]["p50_us"]
    w2_time = 1e6 / w2["rps"]
    return [
        _target(
            "W1 c32: >= 10x the naive baseline's requests/s", w1_32["rps"] / naive["W1 c32"]["rps"], ">=", 10.0, "x"
        ),
        _target(
            "W1 c32: >= 20% of the bare ASGI floor's requests/s",
            100 * w1_32["rps"] / bare["W1 c32"]["rps"],
            ">=",
            20.0,
            "%",
        ),
        _target("W1 c1: p50 <= 1.5x (HTTP floor p50 + ONNX Runtime p50)", w1_1["p50_us"] / floor_c1, "<=", 1.5, "x"),
        _target(
            "W2: time per request <= 1.25x in-process decode + ORT + encode",
            w2_time / fl["inproc_W2_path"]["mean_us"],
            "<=",
            1.25,
            "x",
        ),
        _target(
            "W1 c32: >= 2x the hand-rolled baseline's requests/s", w1_32["rps"] / hand["W1 c32"]["rps"], ">=", 2.0, "x"
        ),
        _target("W1 c1: p50 <= the hand-rolled baseline's", w1_1["p50_us"] / hand["W1 c1"]["p50_us"], "<=", 1.0, "x"),
        _target(
            "W2 c4: >= 1.2x the hand-rolled baseline's requests/s", w2["rps"] / hand["W2 c4"]["rps"], ">=", 1.2, "x"
        ),
        _target(
            "W3: >= 1.2x the hand-rolled baseline's requests/s",
            s["W3 c1"]["rps"] / hand["W3 c1"]["rps"],
            ">=",
            1.2,
            "x",
        ),
        *(
            _target(
                f"{run} on /v2 with binary tensors: requests/s within 15% of /predict's",
                s[run.replace(" ", "v2 ", 1)]["rps"] / s[run]["rps"],
                ">=",
                0.85,
                "x",
            )
            for run in ("W1 c1", "W1 c32", "W2 c4", "W3 c1")
        ),
        _target(
            "W3 over the WebSocket stream: >= 1.2x the hand-rolled baseline's requests/s",
            s["W3ws c1"]["rps"] / hand["W3 c1"]["rps"],
            ">=",
            1.2,
            "x",
        ),
        _target("peak RSS of the serving process < 300 MB", s["peak_rss_mb"], "<", 300.0, "MB"),
        _target(
            "peak RSS per process under the largest legal request of each shape family < 300 MB",
            worst,
            "<",
            300.0,
            "MB",
        ),
        _target(
            "1 x 10,000 + 255 x 1 steps: time <= 1.25x the two parts sent apart",
            res["largest"]["padding"]["ratio"],
            "<=",
            1.25,
            "x",
        ),
    ]


def _target(text: str, value: float, relation: str, goal: float, unit: str) -> dict[str, Any]:
    met = {">=": value >= goal, "<=": value <= goal, "<": value < goal}[relation]
    return {"target": text, "value": value, "goal": goal, "met": met, "unit": unit}


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"# Benchmark results ({res['when']}, {res['machine']})",
        "",
        f"wrk, {res['seconds']} s per run, one wrk thread; everything on 127.0.0.1. Model: {res['model']}.",
        "",
        "| server | run | requests/s | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in res["servers"].items():
        for run, r in runs.items():
            if run == "peak_rss_mb":
                continue
            lines.append(
                f"| {name} | {run} | {r['rps']:,.0f} | {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | "
                f"{r['errors'] + r['non2xx']} |"
            )
    lines += [
        "",
        "In-process floors (one thread calling; the faster of ONNX Runtime as a service worker runs it and on "
        "all cores):",
        "",
    ]
    lines += ["| floor | p50 ms | mean ms |", "| --- | ---: | ---: |"]
    for name, r in res["floors"].items():
        lines.append(f"| {name} | {r['p50_us'] / 1000:.3f} | {r['mean_us'] / 1000:.3f} |")
    lines += ["", "Peak RSS (VmHWM) after all runs:", ""]
    for name, runs in res["servers"].items():
        lines.append(f"- {name}: {runs['peak_rss_mb']:.0f} MB")
    lines += [
        "",
        "Largest legal request of each shape family, one worker on a fresh server (bench/largest.py):",
        "",
        "| family | body MB | peak RSS MB | RSS after MB | best time ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, f in res["largest"].items():
        if name != "padding":
            lines.append(
                f"| {name} | {f['body_mb']:.1f} | {f['peak_mb']:.0f} | {f['after_mb']:.0f} | {f['s'] * 1000:.0f} |"
            )
    pad = res["largest"]["padding"]
    lines += [
        "",
        f"Padding: 1 x 10,000 + 255 x 1 steps in one request took {pad['together_s'] * 1000:.1f} ms; the two parts "
        f"sent apart {pad['apart_s'] * 1000:.1f} ms ({pad['ratio']:.2f}x).",
    ]
    default, shared = (
        res["servers"]["service, batching on (default)"],
        res["servers"].get("service, sequences in Valkey"),
    )
    w3 = f"W3 (one 2,000-step stream in 20-step chunks, sequential): {default['W3 c1']['rps']:,.0f} requests/s passing "
    w3 += f"the states back, {default['W3seq c1']['rps']:,.0f} as a server-held sequence in the embedded store"
    if shared is not None:
        w3 += f", {shared['W3seq c1']['rps']:,.0f} in Valkey"
        w3 += f" (the same server passing states back: {shared['W3 c1']['rps']:,.0f})"
    lines += ["", w3 + "."]
    if "tracing" in res:
        lines += ["", *tracing_markdown(res)]
    if "int8" in res:
        lines += ["", *int8.markdown(res["int8"])]
    lines += ["", "## Targets", "", "| target | measured | goal | met |", "| --- | ---: | ---: | --- |"]
    for t in res["targets"]:
        lines.append(
            f"| {t['target']} | {t['value']:.2f} {t['unit']} | {t['goal']:g} {t['unit']} | "
            f"{'yes' if t['met'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def tracing_markdown(res: dict[str, Any]) -> list[str]:
    off, on, t = res["servers"]["service, batching on (default)"], res["servers"][TRACED], res["tracing"]
    return [
        "Traces (service/tracing.py): off, the hooks cost a request "
        f"{t['off_us']:.2f} us in all ({100 * t['off_us'] / off['W1 c1']['p50_us']:.2f}% of W1 c1's p50). On, with "
        f"every request sampled and exported ({t['spans']:,} spans received): W1 c1 p50 "
        f"{on['W1 c1']['p50_us'] / off['W1 c1']['p50_us']:.2f}x and W1 c32 requests/s "
        f"{on['W1 c32']['rps'] / off['W1 c32']['rps']:.2f}x the default server's (traces off).",
    ]


def chart(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = ["W1 c1", "W1 c32", "W2 c4", "W3 c1"]
    names = list(res["servers"])
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        vals = [res["servers"][name].get(r, {}).get("rps", 0) for r in runs]
        bars = ax.bar(np.arange(len(runs)) + k * width, vals, width, label=name)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v else "" for v in vals], fontsize=7, rotation=90, padding=2)
    ax.set_xticks(np.arange(len(runs)) + width * (len(names) - 1) / 2, runs)
    ax.set(ylabel="requests/s (log)", yscale="log", title=f"Throughput on {res['machine']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per run")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    meta = json.loads((MODEL / "metadata.json").read_text())
    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "seconds": args.seconds,
        "model": f"{meta['name']} v{meta['version']} (hidden {meta['hidden_size']}, {meta['num_layers']} layers)",
        "servers": {},
    }
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        files = make_bodies(Path(tmp), meta)
        # The floors take the faster of ONNX Runtime as a service worker runs it and on all cores.
        from service.settings import Settings

        configs_threads = (Settings().intra_op_threads or 0, 0)
        configs = [in_process_floors(files, meta, t) for t in configs_threads]
        res["floors"] = {k: min((c[k] for c in configs), key=lambda r: r["mean_us"]) for k in configs[0]}
        servers = dict(SERVERS)
        store = valkey_server(Path(tmp))
        if store is not None:  # W3 as a server-held sequence in Valkey (or Redis), beside the embedded store's
            servers["service, sequences in Valkey"] = (
                [PY, "-m", "service"],
                {**FLOAT, "LSTM_STATE_URL": store[0]},
                [("W3", 1), ("W3seq", 1)],
            )
        else:
            print("== no valkey-server or redis-server: W3 through a shared store not measured", flush=True)
        # The default server's settings and gRPC on a port of its own; its HTTP figures are the runs above.
        servers["service, gRPC"] = ([PY, "-m", "service"], {**FLOAT, "LSTM_GRPC_PORT": str(free_port())}, GRPC_RUNS)
        sink = stack.enter_context(OtlpSink(keep=False))  # a collector's stand-in: counts the spans
        traced = {**FLOAT, "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}
        servers[TRACED] = ([PY, "-m", "service"], traced, [("W1", 1), ("W1", 32)])
        for name, (cmd, env, runs) in servers.items():
            print(f"== {name}", flush=True)
            with server(cmd, env) as (url, pid):
                if "LSTM_GRPC_PORT" in env:
                    GRPC_TARGETS[url] = f"127.0.0.1:{env['LSTM_GRPC_PORT']}"
                out: dict[str, Any] = {}
                wrk(url, "W1", 4, 2, files, meta)  # warm-up
                for workload, conns in runs:
                    r = load(url, workload, conns, args.seconds, files, meta)
                    out[f"{workload} c{conns}"] = r
                    print(
                        f"   {workload} c{conns}: {r['rps']:,.0f} req/s, p50 {r['p50_us'] / 1000:.2f} ms, "
                        f"p99 {r['p99_us'] / 1000:.2f} ms, errors {r['errors'] + r['non2xx']}",
                        flush=True,
                    )
                out["peak_rss_mb"] = peak_rss_mb(pid)
                res["servers"][name] = out
        if store is not None:
            store[1].terminate()
            store[1].wait(10)
        res["tracing"] = {"off_us": tracing_off_us(), "spans": sink.count}
        print("== largest legal requests", flush=True)
        from training.data import load_csv

        rows = load_csv(ROOT / "data" / "seattle-weather.csv", meta["feature_names"], meta["target_names"]).features
        res["largest"] = largest.measure(server, rows, meta)
        print("== int8 against float32", flush=True)
        res["int8"] = int8.measure(server, load, make_bodies, timed, args.seconds, configs_threads[0], PY)
    res["targets"] = targets(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(res))
    chart(res, args.out / "chart.png")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
