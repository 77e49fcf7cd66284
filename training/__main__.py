"""Command line: ``python -m training train|export ...`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any

from service.model.contract import CONFIG_FILE, METADATA_FILE, MODEL_CARD_FILE, MODEL_FILE

from .quantize import CHOICES, MAX_MAE_GROWTH
from .train import TrainConfig


def _csv_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected one or more comma-separated names")
    return items


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, defaulting to the dataclass's own default."""
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, list):
            parser.add_argument(
                flag, type=_csv_list, default=default, help=f"comma-separated (default: {','.join(default)})"
            )
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"(default: {default})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_train = sub.add_parser("train", help="train on a CSV and write a checkpoint, metrics and plots")
    _add_config_flags(p_train)

    p_export = sub.add_parser("export", help="export a checkpoint to the ONNX model repository")
    p_export.add_argument("--checkpoint", default="artifacts/seattle-weather/checkpoint.pt")
    p_export.add_argument("--repository", default="models", help="model repository root (default: models)")
    p_export.add_argument("--name", default="seattle-weather", help="model name (default: seattle-weather)")
    p_export.add_argument("--version", type=int, default=1, help="model version, a positive integer (default: 1)")
    p_export.add_argument(
        "--quantize",
        choices=CHOICES,
        default=None,
        help="write int8 weights (ONNX Runtime's dynamic quantization), if the held-out MAE grows by at most "
        f"{MAX_MAE_GROWTH:g}",
    )

    p_explain = sub.add_parser("explain", help="draw a model's gates and cell state over a CSV (PNG)")
    p_explain.add_argument("--model", default="models/seattle-weather/1", help="a model version folder")
    p_explain.add_argument(
        "--data", default=None, help="CSV with the model's feature columns (default: its training data)"
    )
    p_explain.add_argument("--start", type=int, default=None, help="first row to draw (default: the last --steps rows)")
    p_explain.add_argument("--steps", type=int, default=365, help="rows to draw (default: 365)")
    p_explain.add_argument("--layer", type=int, default=-1, help="layer index, 0-based; -1 the top (default)")
    p_explain.add_argument("--out", default="artifacts/seattle-weather/gates.png")

    args = parser.parse_args(argv)
    opts: dict[str, Any] = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        if args.command == "train":
            from .train import train

            metrics = train(TrainConfig(**opts))
            print(json.dumps(metrics, indent=2))
        elif args.command == "explain":
            from pathlib import Path

            from .explain import plot

            model = Path(args.model)
            data = args.data or json.loads((model / METADATA_FILE).read_text())["training"]["data"]
            summary = plot(model, data, Path(args.out), args.start, args.steps, args.layer)
            print(json.dumps(summary, indent=2))
            print(f"wrote {args.out}")
        else:
            from .export import export

            if args.version < 1:
                parser.error("--version must be a positive integer")
            folder = export(**opts)
            written = f"{folder}/{MODEL_FILE}, {folder}/{METADATA_FILE}, {folder}/{MODEL_CARD_FILE}"
            print(f"wrote {written} and {folder.parent}/{CONFIG_FILE}")
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
