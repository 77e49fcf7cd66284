"""Length groups and time chunks (service.model.schedule): every step once, work that follows the real
steps, and the same numbers as one padded ONNX Runtime call."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.model import schedule
from service.model.batch import Batch
from service.model.contract import INPUTS, MODEL_FILE, OUTPUTS
from service.model.engine import Engine

from .conftest import windows

SHAPES = [
    [1],
    [300],
    [1, 1, 1],
    [300, 1, 1, 1, 1],
    [5, 40, 13, 1, 27],
    [64] * 9,
    [97, 3, 97, 50, 51, 2, 1, 96],
]


@pytest.mark.parametrize("lengths", [*SHAPES, [10_000, *[1] * 255], list(range(1, 200))])
@pytest.mark.parametrize(("chunk", "budget"), [(7, 50), (64, 256), (1024, 32768)])
def test_plan_covers_every_step_once_within_its_budgets(lengths: list[int], chunk: int, budget: int) -> None:
    lengths_a = np.array(lengths)
    covered = [np.zeros(n, dtype=int) for n in lengths]
    done = np.zeros(len(lengths), dtype=int)  # steps each sequence has run, wave by wave
    for wave in schedule.plan(lengths_a, chunk, budget):
        in_wave = set()
        for call in wave:
            assert (call.steps >= 1).all(), "a sequence that has ended must not run (length 0 resets states)"
            assert call.padded == call.steps.max() <= chunk
            assert call.cost <= budget or len(call.rows) == 1
            assert call.cost <= call.steps.sum() * schedule.WASTE + schedule.SLACK
            for i, n in zip(call.rows.tolist(), call.steps.tolist(), strict=True):
                assert i not in in_wave and call.start == done[i], "chunks of a sequence run in order"
                in_wave.add(i)
                covered[i][call.start : call.start + n] += 1
                done[i] += n
    assert all((c == 1).all() for c in covered)
    padded = sum(c.cost for w in schedule.plan(lengths_a, chunk, budget) for c in w)
    assert padded <= sum(lengths) * schedule.WASTE + schedule.SLACK * len(lengths)


@pytest.fixture(scope="module")
def model(repo: Path) -> Path:
    return repo / "tiny" / "1"


def reference(model: Path, batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One padded ONNX Runtime call on the whole batch: what the graph itself gives."""
    sess = ort.InferenceSession(str(model / MODEL_FILE), providers=["CPUExecutionProvider"])
    feeds = dict(zip(INPUTS, (batch.padded(), batch.h0, batch.c0, batch.lengths.astype(np.int32)), strict=True))
    y, hn, cn = sess.run(list(OUTPUTS), feeds)
    return y, hn, cn


@pytest.mark.parametrize("lengths", SHAPES)
@pytest.mark.parametrize(("chunk", "budget"), [(7, 50), (64, 256), (1024, 32768)])
def test_scheduled_runs_equal_one_padded_call(
    model: Path, weather: np.ndarray, rng: np.random.Generator, lengths: list[int], chunk: int, budget: int
) -> None:
    engine = Engine.load(model, "cpu", chunk_steps=chunk, call_max_steps=budget)
    seqs = windows(weather, lengths, rng)
    states = (rng.standard_normal((2, 2, len(lengths), 8)) * 0.5).astype(np.float32)
    batch = Batch([s.astype(np.float32) for s in seqs], states[0], states[1])
    y, hn, cn = reference(model, batch)
    results = engine.predict(batch)
    assert len(results) == len(lengths)
    for i, (r, n) in enumerate(zip(results, lengths, strict=True)):
        assert r.outputs.shape == (n, 1)
        np.testing.assert_allclose(r.outputs, y[i, :n], rtol=0, atol=1e-5)
        np.testing.assert_allclose(r.hn, hn[:, i], rtol=0, atol=1e-5)
        np.testing.assert_allclose(r.cn, cn[:, i], rtol=0, atol=1e-5)


def test_one_long_sequence_does_not_pad_many_short_ones(model: Path, weather: np.ndarray) -> None:
    """1 x 3,000 steps and 255 x 1 step cost about 3,255 steps, not 256 x 3,000."""
    engine = Engine.load(model, "cpu")
    seqs = [weather[:3000].astype(np.float32), *[weather[i : i + 1].astype(np.float32) for i in range(255)]]
    before = engine.steps_run
    engine.predict(Batch(seqs, *engine.spec.zero_states(len(seqs))))
    real = 3000 + 255
    assert engine.steps_run - before <= real * schedule.WASTE + schedule.SLACK, engine.steps_run - before
