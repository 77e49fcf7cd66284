"""Server-held sequences: the one small interface the pipeline talks to, whichever store is behind it.

A sequence is a key (the model's name and the client's sequence id) holding the LSTM states after the
last chunk it ran, as opaque bytes (``h`` then ``c``, float32, read back bit for bit), the states before
that chunk, and how many chunks it has run. One chunk at a time: ``claim`` takes the sequence for one
chunk under the caller's token and returns its states (None for a sequence that starts), then exactly one
of ``keep`` (store the new states), ``drop`` (the sequence ended) or ``release`` (the chunk failed: nothing
changes). The token is the caller's, so that a claim whose answer was lost (a deadline, a dropped
connection) can still be released by it. A claim lapses after ``lease_s`` unless ``renew`` extends it (the
pipeline renews it while its chunk runs), so that a worker or replica that died mid-chunk holds its
sequence for ``lease_s`` at most; a lapsed claim can neither keep nor drop (its token no longer matches).

Chunks may be numbered (0 for the start, then 1, 2, ...), so that a client can retry a chunk whose answer
it never got without its being applied twice: a chunk numbered as the last one run is a replay, answered
from the states before it and changing nothing (``Claim.replay``); any other number but the next is
refused (``OutOfOrder``), and so is a replay whose inputs are not those of the chunk it repeats
(``ReusedChunk``: the caller gives a digest of them). An ended sequence is remembered for ``ended_s`` (five
minutes, or ``idle_s`` if shorter) so that its last chunk can be replayed too. A start is always a start: it
resets the sequence, which retrying it does again, the same way.

Semantics every store keeps (``tests/test_state.py`` runs each store through them):

- a sequence that was never started is unknown without a start (``UnknownSequence``); one that ended is
  told so (``EndedSequence``) for ``ended_s``, then is unknown;
- a start (re)starts it, from no states;
- a second chunk while one runs is refused (``BusySequence``), never run at the same time;
- a sequence idle for ``idle_s`` expires: the next chunk is told so (``ExpiredSequence``) for another
  ``idle_s``, after which it is simply unknown;
- at most ``max_sequences`` live sequences; a start beyond is refused (``StoreFull``);
- a store that cannot be reached says so (``StoreUnavailable``), and nothing is answered from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class SequenceError(Exception):
    """Something about one sequence; ``key`` names it."""

    def __init__(self, key: str, msg: str) -> None:
        super().__init__(msg)
        self.key = key


class UnknownSequence(SequenceError):
    pass


class ExpiredSequence(SequenceError):
    pass


class BusySequence(SequenceError):
    """Another chunk holds the sequence; ``retry_after`` is how long its claim has left, at most."""

    def __init__(self, key: str, msg: str, retry_after: float) -> None:
        super().__init__(key, msg)
        self.retry_after = retry_after


class EndedSequence(SequenceError):
    pass


class StoreFull(SequenceError):
    """As many live sequences as the store takes; ``limit`` is their number, or None where the store's
    memory is full first (Valkey's maxmemory)."""

    def __init__(self, key: str, msg: str, limit: int | None) -> None:
        super().__init__(key, msg)
        self.limit = limit


class OutOfOrder(SequenceError):
    """A numbered chunk that is neither the next nor a replay of the last; ``expected`` is the next one's."""

    def __init__(self, key: str, expected: int) -> None:
        super().__init__(key, f"chunk out of order: {expected} next")
        self.expected = expected


class ReusedChunk(SequenceError):
    """The number of the last chunk run, sent with other inputs: not a retry of it."""


class StoreUnavailable(Exception):
    """The store cannot be reached or did not answer in time."""


@dataclass(frozen=True)
class Claim:
    """One chunk's hold on a sequence."""

    key: str
    token: str  # whose claim it is: a lapsed claim cannot store over a newer one
    states: bytes | None  # None: the sequence starts
    replay: bool = False  # a retry of the last chunk run: states are those before it, and nothing is held
    inputs: bytes = b""  # the caller's digest of the chunk's inputs, kept with it: a replay must match it


@dataclass(frozen=True)
class Terms:
    """What every store enforces."""

    idle_s: float  # a sequence idle this long expires
    max_sequences: int  # live sequences at once
    lease_s: float  # a claim not kept, dropped or released by then lapses

    @property
    def ended_s(self) -> float:
        """How long an ended sequence is remembered (its last chunk can be replayed, and it says it ended)."""
        return min(self.idle_s, ENDED_KEEP_S)


ENDED_KEEP_S = 300.0  # long enough for any client's retries; ended sequences do not count against the limit


class SequenceStore(Protocol):
    terms: Terms

    async def claim(
        self, key: str, start: bool, token: str, chunk: int | None = None, inputs: bytes = b""
    ) -> Claim: ...

    async def renew(self, claim: Claim) -> None: ...

    async def keep(self, claim: Claim, states: bytes) -> None: ...

    async def drop(self, claim: Claim) -> None: ...

    async def release(self, claim: Claim) -> None: ...

    async def close(self) -> None: ...


def busy(key: str, retry_after: float) -> BusySequence:
    return BusySequence(key, "busy", retry_after)


def unknown(key: str) -> UnknownSequence:
    return UnknownSequence(key, "unknown")


def expired(key: str, idle_s: float) -> ExpiredSequence:
    return ExpiredSequence(key, f"expired after {idle_s:g} s")


def ended(key: str) -> EndedSequence:
    return EndedSequence(key, "ended")


def reused(key: str) -> ReusedChunk:
    return ReusedChunk(key, "a replay with other inputs")


def full(key: str, limit: int | None) -> StoreFull:
    return StoreFull(key, "out of memory" if limit is None else f"{limit} sequences live", limit)
