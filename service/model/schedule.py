"""How a batch of sequences of unequal lengths becomes ONNX Runtime calls whose work follows its real steps.

One padded call costs (sequences x longest sequence) steps, whatever the shorter ones hold:
one 10,000-step sequence beside 255 one-step ones would cost 2,560,000 steps. Instead:

- **Time chunks.** A sequence longer than ``chunk_steps`` runs in chunks, each starting from
  the states the previous one ended with. This is exact: an LSTM is a recurrence, and
  ``sequence_lens`` makes every state come from the sequence's own last step. Chunk ``k`` of
  every sequence forms wave ``k``; a wave depends on the one before it.
- **Length groups.** Within a wave, sequences sorted by length are cut into groups whose padded
  size stays within ``WASTE`` of their real steps (plus ``SLACK`` steps, so tiny groups are not
  split for nothing) and within ``call_max_steps``, which bounds the memory of one call.

A sequence never takes part in a call once it has ended: a length of 0 would reset its states.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WASTE = 1.25  # padded steps of a call at most this times its real steps ...
SLACK = 64  # ... plus this many


@dataclass(frozen=True)
class Run:
    """One ONNX Runtime call: some sequences, one time chunk of each."""

    rows: np.ndarray  # indices of the sequences in the batch
    start: int  # the chunk's first step
    steps: np.ndarray  # steps of each sequence in this call, each >= 1
    padded: int  # max(steps): the call's time axis

    @property
    def cost(self) -> int:
        return len(self.rows) * self.padded


def plan(lengths: np.ndarray, chunk_steps: int, call_max_steps: int) -> list[list[Run]]:
    """Waves of calls covering every step of every sequence exactly once; calls in a wave are independent."""
    order = np.argsort(-lengths, kind="stable")  # longest first: each wave's live sequences are a prefix
    ordered = lengths[order]
    waves: list[list[Run]] = []
    start = 0
    while start < ordered[0]:
        live = int(np.count_nonzero(ordered > start))
        steps = np.minimum(ordered[:live] - start, chunk_steps)  # non-increasing
        waves.append(list(_groups(order[:live], steps, start, call_max_steps)))
        start += chunk_steps
    return waves


def _groups(rows: np.ndarray, steps: np.ndarray, start: int, call_max_steps: int) -> list[Run]:
    calls: list[Run] = []
    i, n = 0, len(rows)
    cumulative = np.concatenate(([0], np.cumsum(steps)))
    while i < n:
        padded = int(steps[i])
        most = max(1, call_max_steps // padded)
        # The largest j with (j - i) * padded within budget of the real steps i..j-1 (real grows as j does).
        j = i + 1
        while j < n and j - i < most:
            real = int(cumulative[j + 1] - cumulative[i])
            if (j + 1 - i) * padded > real * WASTE + SLACK:
                break
            j += 1
        calls.append(Run(rows[i:j], start, steps[i:j], padded))
        i = j
    return calls
