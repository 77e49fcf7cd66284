from pathlib import Path

import numpy as np
import pytest

from training.data import Series, load_csv, sample_windows, split_by_time, train_stats

from .conftest import DATA


def test_committed_csv_loads_with_named_columns() -> None:
    s = load_csv(DATA, ["temp_min", "wind"], ["temp_max"])
    assert s.features.shape == (1461, 2) and s.targets.shape == (1461, 1)
    assert s.features.dtype == np.float32
    assert s.features[0].tolist() == pytest.approx([5.0, 4.7])  # first data row: 2012/01/01
    assert s.targets[0, 0] == pytest.approx(12.8)


def test_missing_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no column humidity"):
        load_csv(DATA, ["humidity"], ["temp_max"])


def test_non_numeric_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'weather' is not numeric"):
        load_csv(DATA, ["weather"], ["temp_max"])


def test_split_is_chronological_and_disjoint() -> None:
    sp = split_by_time(1000, val_frac=0.15, test_frac=0.15)
    assert 0 < sp.train_end < sp.val_end < 1000
    assert sp.val_end == 850 and sp.train_end == 700


def test_stats_come_from_training_rows_only() -> None:
    x = np.arange(100, dtype=np.float32)[:, None]
    s = Series(x, x.copy(), ["a"], ["a"])
    sp = split_by_time(100, 0.2, 0.2)
    stats = train_stats(s, sp)
    assert stats["x_mean"][0] == pytest.approx(x[: sp.train_end].mean())  # later rows would raise it


def test_windows_stay_in_range_and_target_the_next_step() -> None:
    x = np.arange(50, dtype=np.float32)[:, None]
    s = Series(x, x * 10, ["a"], ["b"])
    xs, ys = sample_windows(s, end=30, window=8, count=200, rng=np.random.default_rng(0))
    assert xs.shape == (200, 8, 1) and ys.shape == (200, 8, 1)
    np.testing.assert_array_equal(ys, (xs + 1) * 10)  # the target of step t is row t+1
    assert ys.max() / 10 < 30  # no target row at or after `end`
