import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.__main__ import main
from training.model import LSTMForecaster, ModelConfig
from training.train import TrainConfig, stream_predict, train

from .conftest import DATA, TINY


def test_checkpoint_holds_state_dict_config_stats_and_metrics(tiny_run: Path) -> None:
    ckpt = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    assert set(ckpt) >= {"model", "config", "stats", "metrics"}
    assert ckpt["config"]["model"]["hidden_size"] == TINY["hidden_size"]
    assert ckpt["config"]["train"]["features"] == TrainConfig().features
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for split in ("val", "test"):
        for who in ("model", "persistence"):
            assert metrics[split][who]["mae"] > 0 and metrics[split][who]["rmse"] >= metrics[split][who]["mae"]


def test_training_is_seeded(tmp_path: Path) -> None:
    cfg = {"data": str(DATA), "max_epochs": 2, "plots": False, **TINY}
    a = train(TrainConfig(out=str(tmp_path / "a"), **cfg))
    b = train(TrainConfig(out=str(tmp_path / "b"), **cfg))
    assert a == b


def test_training_reduces_error_from_the_untrained_model(tiny_run: Path) -> None:
    """A few epochs must already move the model: its streamed validation error drops below the untrained one."""
    from training.data import load_csv

    cfg = TrainConfig()
    series = load_csv(DATA, cfg.features, cfg.targets)
    ckpt = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    fresh = LSTMForecaster(ModelConfig(**ckpt["config"]["model"]))
    fresh.set_stats(ckpt["stats"])
    fresh.eval()
    trained = LSTMForecaster(ModelConfig(**ckpt["config"]["model"]))
    trained.load_state_dict(ckpt["model"])
    trained.eval()
    rows = np.arange(1, len(series.targets))
    errs = [np.abs(stream_predict(m, series)[rows - 1] - series.targets[rows]).mean() for m in (fresh, trained)]
    assert errs[1] < errs[0]


def test_cli_trains_and_exports_a_user_csv(tmp_path: Path) -> None:
    """Any CSV, columns chosen by flags: here a synthetic two-feature, two-target series."""
    t = np.arange(300)
    rows = ["time,load,temp,noise"] + [
        f"{i},{np.sin(i / 9):.5f},{np.cos(i / 13):.5f},{(i * 7919) % 17 / 17:.5f}" for i in t
    ]
    csv = tmp_path / "user.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    args = ["--data", str(csv), "--features", "load,temp,noise", "--targets", "load,temp", "--out", str(out)]
    tiny = ["--hidden-size", "6", "--num-layers", "1", "--max-epochs", "2", "--window", "16"]
    assert main(["train", *args, *tiny]) == 0
    for name in ("checkpoint.pt", "metrics.json", "loss.png", "forecast.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["export", "--checkpoint", str(out / "checkpoint.pt"), "--repository", str(tmp_path / "m"),
                 "--name", "user", "--version", "3"]) == 0  # fmt: skip
    meta = json.loads((tmp_path / "m" / "user" / "3" / "metadata.json").read_text())
    assert meta["feature_names"] == ["load", "temp", "noise"] and meta["target_names"] == ["load", "temp"]
    assert (meta["input_size"], meta["output_size"], meta["num_layers"]) == (3, 2, 1)


def test_cli_reports_a_bad_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(DATA), "--features", "nope", "--out", str(tmp_path)]) == 1
    assert "no column nope" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.pt").exists()
