"""int8 against float32, for the shipped model (hidden 64) and a larger one (hidden 256), in one run.

The larger model is trained here for a few epochs (seconds) and exported twice, float32 as version 1 and int8
as version 2, through the same accuracy gate as ``python -m training export --quantize int8``; the shipped
model's versions 1 and 2 are the same pair. For each model and precision: ONNX Runtime in-process
(``session.run`` at W1's and W2's shapes, with the threads a service worker uses) and through HTTP (the
service pinned to that version with ``LSTM_MODEL_VERSION``; W1 at concurrency 1 and 32, W2 at 4).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "seattle-weather"
HTTP_RUNS = [("W1", 1), ("W1", 32), ("W2", 4)]
SHAPES = {"W1": (1, 32), "W2": (64, 100)}


def wide_repository(folder: Path) -> Path:
    """A model of 2 layers of 256 units trained briefly on the committed data, as float32 v1 and int8 v2."""
    from training.export import export, load_checkpoint, to_onnx
    from training.quantize import AccuracyGateError, to_int8
    from training.train import TrainConfig, train

    run = folder / "run"
    train(TrainConfig(out=str(run), hidden_size=256, max_epochs=8, plots=False))
    root = folder / "models"
    float_folder = export(run / "checkpoint.pt", root, "wide", 1)
    try:
        export(run / "checkpoint.pt", root, "wide", 2, quantize="int8")
    except AccuracyGateError as e:  # the speed is still measured; the refusal is reported with it
        meta = json.loads((float_folder / "metadata.json").read_text())
        meta |= {"precision": "int8", "quantization": {"refused": str(e)}}
        (root / "wide" / "2").mkdir()
        (root / "wide" / "2" / "model.onnx").write_bytes(to_int8(to_onnx(load_checkpoint(run / "checkpoint.pt")[0])))
        (root / "wide" / "2" / "metadata.json").write_text(json.dumps(meta))
    return root / "wide"


def in_process(model: Path, meta: dict[str, Any], threads: int, timed: Callable[..., dict[str, float]]) -> dict:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    out = {}
    for name, (b, t) in SHAPES.items():
        x = rng.standard_normal((b, t, meta["input_size"])).astype(np.float32)
        z = np.zeros((meta["num_layers"], b, meta["hidden_size"]), dtype=np.float32)
        feeds = {"x": x, "h0": z, "c0": z, "lengths": np.full(b, t, dtype=np.int32)}
        out[name] = timed(lambda f=feeds: session.run(None, f))
    return out


def measure(
    server: Callable[..., Any],
    load: Callable[..., dict[str, Any]],
    make_bodies: Callable[[Path, dict[str, Any]], dict[str, Path]],
    timed: Callable[..., dict[str, float]],
    seconds: int,
    threads: int,
    py: str,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print("   training the hidden-256 model", flush=True)
        models = {"hidden 64 (shipped)": SHIPPED, "hidden 256": wide_repository(Path(tmp))}
        for label, folder in models.items():
            meta = json.loads((folder / "1" / "metadata.json").read_text())
            (Path(tmp) / f"bodies-{meta['hidden_size']}").mkdir()
            bodies = make_bodies(Path(tmp) / f"bodies-{meta['hidden_size']}", meta)
            for version in ("1", "2"):
                version_meta = json.loads((folder / version / "metadata.json").read_text())
                precision = version_meta["precision"]
                entry: dict[str, Any] = {"in_process": in_process(folder / version, meta, threads, timed)}
                if precision == "int8":
                    entry["gate"] = version_meta["quantization"]
                env = {
                    "LSTM_MODEL_REPOSITORY": str(folder.parent),
                    "LSTM_MODEL_NAME": meta["name"],
                    "LSTM_MODEL_VERSION": version,
                }
                with server([py, "-m", "service"], env) as (url, _):
                    load(url, "W1", 4, 2, bodies, meta)  # warm-up
                    for workload, conns in HTTP_RUNS:
                        entry[f"{workload} c{conns}"] = load(url, workload, conns, seconds, bodies, meta)
                results[f"{label}, {precision}"] = entry
                print(f"   {label}, {precision}: " + _line(entry), flush=True)
    return results


def _line(entry: dict[str, Any]) -> str:
    ip = entry["in_process"]
    http = ", ".join(f"{k} {entry[k]['rps']:,.0f} req/s" for k in (f"{w} c{c}" for w, c in HTTP_RUNS))
    return f"in-process W1 {ip['W1']['p50_us']:.0f} us, W2 {ip['W2']['p50_us']:.0f} us; {http}"


def markdown(results: dict[str, Any]) -> list[str]:
    """The int8 section of results.md: each precision's figures, and int8's as a ratio to float32."""
    lines = [
        "## int8 against float32",
        "",
        "| model, weights | in-process W1 p50 | in-process W2 p50 | W1 c1 p50 | W1 c32 req/s | W2 c4 req/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in results.items():
        ip = e["in_process"]
        lines.append(
            f"| {name} | {ip['W1']['p50_us']:.0f} us | {ip['W2']['p50_us'] / 1000:.2f} ms | "
            f"{e['W1 c1']['p50_us'] / 1000:.2f} ms | {e['W1 c32']['rps']:,.0f} | {e['W2 c4']['rps']:,.0f} |"
        )
    lines += ["", "int8 / float32 (time: below 1 is faster; throughput: above 1 is faster):", ""]
    for label in dict.fromkeys(n.rsplit(", ", 1)[0] for n in results):
        f, q = results.get(f"{label}, float32"), results.get(f"{label}, int8")
        if f is None or q is None:
            continue
        lines.append(
            f"- {label}: in-process W1 {ratio(q, f, 'W1'):.2f}x, W2 {ratio(q, f, 'W2'):.2f}x; "
            f"HTTP W1 c1 p50 {q['W1 c1']['p50_us'] / f['W1 c1']['p50_us']:.2f}x, "
            f"W1 c32 {q['W1 c32']['rps'] / f['W1 c32']['rps']:.2f}x, W2 c4 {q['W2 c4']['rps'] / f['W2 c4']['rps']:.2f}x"
            f"; held-out MAE {_mae(q)}"
        )
    return [*lines, ""]


def ratio(q: dict[str, Any], f: dict[str, Any], shape: str) -> float:
    """int8's in-process time at a workload's shape, as a ratio to float32's."""
    return float(q["in_process"][shape]["p50_us"] / f["in_process"][shape]["p50_us"])


def _mae(q: dict[str, Any]) -> str:
    gate = q["gate"]
    if "refused" in gate:
        return f"refused by the gate ({gate['refused']})"
    mae = gate["held_out_mae"]
    return f"float32 {mae['float32'][0]:.4f}, int8 {mae['int8'][0]:.4f}"
