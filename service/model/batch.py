"""The one validated request type every protocol decodes to, and the per-sequence result.

Sequences are kept unpadded: what a request costs follows the steps it really holds.
The engine pads only inside its own calls, grouping sequences of similar length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Batch:
    """Validated model inputs: B sequences of their own lengths and their initial states."""

    x: list[np.ndarray]  # B arrays [T_i, F] float32, each T_i >= 1
    h0: np.ndarray  # [L, B, H] float32
    c0: np.ndarray  # [L, B, H] float32
    lengths: np.ndarray = field(init=False)  # [B] int64
    size: int = field(init=False)  # sequences
    steps: int = field(init=False)  # steps of all sequences together: the work the request really asks for
    longest: int = field(init=False)  # steps of the longest sequence
    equal: bool = field(init=False)  # every sequence has the same length

    def __post_init__(self) -> None:
        counts = [len(s) for s in self.x]
        self.lengths = np.array(counts, dtype=np.int64)
        self.size = len(counts)
        self.steps = sum(counts)
        self.longest = max(counts, default=0)
        self.equal = min(counts, default=0) == self.longest

    def padded(self) -> np.ndarray:
        """The sequences as one zero-padded array [B, max T_i, F]."""
        out = np.zeros((self.size, int(self.lengths.max()), self.x[0].shape[1]), dtype=np.float32)
        for i, s in enumerate(self.x):
            out[i, : len(s)] = s
        return out


def merge(batches: list[Batch]) -> Batch:
    """One batch of all sequences, in order."""
    if len(batches) == 1:
        return batches[0]
    return Batch(
        x=[s for b in batches for s in b.x],
        h0=np.concatenate([b.h0 for b in batches], axis=1),
        c0=np.concatenate([b.c0 for b in batches], axis=1),
    )


@dataclass
class SequenceResult:
    """One sequence's answer: exactly its own steps, and the states after its own last step."""

    outputs: np.ndarray  # [T_i, O]
    hn: np.ndarray  # [L, H]
    cn: np.ndarray  # [L, H]
