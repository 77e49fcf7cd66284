"""Server-held sequences on the request path: a chunk that names a sequence runs from the states the store
holds for it, and leaves the states after its last step there for the next chunk, on any worker or replica.

The store is behind ``service.state.store.SequenceStore``; this module does not know which one it is. Its
errors become the pipeline's, once: an unknown, ended or expired sequence is invalid input naming the place
the request named it (422, 400, or close 1007); a numbered chunk neither next nor a retry of the last is
``ChunkOutOfOrder`` (409, naming the chunk's number); a sequence running another chunk is ``SequenceBusy`` (409);
more live sequences than the store holds is ``SequencesFull`` (429); a store out of reach is
``StoreDown`` (503, nothing answered from it; where and why go to the log, not to the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from .. import metrics
from ..model.batch import Batch
from ..model.contract import ModelSpec
from ..state.store import (
    BusySequence,
    Claim,
    EndedSequence,
    ExpiredSequence,
    OutOfOrder,
    ReusedChunk,
    SequenceStore,
    StoreFull,
    StoreUnavailable,
    UnknownSequence,
)
from . import jsondata
from .errors import ChunkOutOfOrder, InvalidInput, Loc, SequenceBusy, SequencesFull, StoreDown, error

if TYPE_CHECKING:
    from .dataplane import Call, Outcome

log = logging.getLogger(__name__)
MAX_ID_CHARS = 256
MAX_ID = 2**64 - 1  # Triton's sequence ids are unsigned 64-bit integers, or strings
MAX_CHUNK = 2**63 - 1
# A chunk's claim on its sequence lasts this long, renewed every third of it while the chunk runs: a worker
# or replica that died mid-chunk holds its sequence this long at most (the chunk sent again waits, 409).
LEASE_S = 3.0


@dataclass(frozen=True)
class SequenceRef:
    """A request's sequence: its id (an unsigned integer or a string), whether it starts or ends the
    sequence, and where the request named it (for errors)."""

    id: int | str
    start: bool = False
    end: bool = False
    loc: Loc = ("sequence", "id")
    chunk: int | None = None  # the chunk's number, if the client numbers them (0 for the start): retries are safe
    chunk_loc: Loc = ("sequence", "chunk")

    def key(self, spec: ModelSpec) -> str:
        """The store's key: the model's name, version and revision (a sequence goes on with the weights it started
        on; another version's states, or a rewritten version's, are not its states), and the id, integers and
        strings kept apart. As JSON, so that no name or id can spell another's key."""
        kind = "u" if isinstance(self.id, int) else "s"
        return orjson.dumps([spec.name, spec.version, spec.revision, kind, str(self.id)]).decode()


def sequence_id(value: Any, loc: Loc) -> int | str:
    """A sequence id as the protocols take it: an integer in 1..2**64-1, or a string of 1 to 256 characters."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID:
        return value
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS:
        return value
    msg = f"A sequence id is an integer in 1..{MAX_ID} or a string of 1 to {MAX_ID_CHARS} characters"
    raise InvalidInput([error(loc, msg, "sequence_id")])


def chunk_number(value: Any, start: bool, loc: Loc) -> int:
    """A chunk's number: 0 for the start, then 1, 2, ... in order."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_CHUNK:
        raise InvalidInput([error(loc, f"A chunk's number is an integer in 0..{MAX_CHUNK}", "sequence_chunk")])
    if start != (value == 0):
        msg = "A start is chunk 0" if start else "Chunk 0 is the start: number the chunks after it from 1"
        raise InvalidInput([error(loc, msg, "sequence_chunk")])
    return value


FIELDS = ("id", "start", "end", "chunk")


def read_ref(reader: jsondata.Reader, value: Any, loc: Loc) -> SequenceRef:
    """``{"id": ..., "start": false, "end": false, "chunk": n}`` (REST and the WebSocket stream): the server-held
    sequence a chunk belongs to; every field checked and named."""
    if not jsondata.is_object(value):
        msg = "Input should be an object: id, start, end, chunk"
        raise InvalidInput([error(loc, msg, "model_attributes_type")])
    names = jsondata.keys(value, loc)
    plain = {k: reader.plain(value[k]) for k in names}
    errors = [
        error((*loc, jsondata.key_name(k)), "Extra inputs are not permitted", "extra_forbidden")
        for k in names
        if k not in FIELDS
    ]
    if "id" not in plain:
        errors.append(error((*loc, "id"), "Field required", "missing"))
    for flag in ("start", "end"):
        if not isinstance(plain.get(flag, False), bool):
            errors.append(error((*loc, flag), "Input should be a valid boolean", "bool_type"))
    if errors:
        raise InvalidInput(errors)
    ident = sequence_id(plain["id"], (*loc, "id"))
    start = plain.get("start", False)
    chunk = None if plain.get("chunk") is None else chunk_number(plain["chunk"], start, (*loc, "chunk"))
    return SequenceRef(ident, start, plain.get("end", False), (*loc, "id"), chunk, (*loc, "chunk"))


_HEADER = np.dtype([("layers", "<u4"), ("units", "<u4")])


def pack(hn: np.ndarray, cn: np.ndarray) -> bytes:
    """One sequence's final states [L, H] as the store keeps them: their shape, then h and c as little-endian
    float32."""
    header = np.array([hn.shape], dtype=_HEADER).tobytes()
    return header + np.concatenate([hn.ravel(), cn.ravel()]).astype("<f4", copy=False).tobytes()


def unpack(blob: bytes, spec: ModelSpec, ref: SequenceRef) -> tuple[np.ndarray, np.ndarray]:
    """h0 and c0 [L, 1, H] from the store's bytes, exactly as they were written; refused when the sequence
    was run on a model of another shape (another version, say)."""
    layers, units = spec.num_layers, spec.hidden_size
    head = _HEADER.itemsize
    stored = tuple(np.frombuffer(blob[:head], dtype=_HEADER)[0]) if len(blob) >= head else None
    if stored != (layers, units) or len(blob) != head + 2 * layers * units * 4:
        msg = f"Sequence {ref.id!r} holds states of another shape than this model's: start it again"
        raise InvalidInput([error(ref.loc, msg, "sequence_shape")])
    states = np.frombuffer(blob, dtype="<f4", offset=head).astype(np.float32)
    half = states.size // 2
    shape = (layers, 1, units)
    return states[:half].reshape(shape).copy(), states[half:].reshape(shape).copy()


@dataclass
class Sequences:
    store: SequenceStore

    def __post_init__(self) -> None:
        self._tokens = itertools.count()
        self._prefix = f"{os.getpid()}-{os.urandom(4).hex()}-"

    async def run(self, call: Call[Any], spec: ModelSpec, infer: Callable[[Call[Any]], Awaitable[Outcome]]) -> Outcome:
        ref = call.sequence
        assert ref is not None and call.batch.size == 1  # rules.sequence_batch saw to it
        claim = Claim(ref.key(spec), f"{self._prefix}{next(self._tokens)}", None)
        done = False
        try:
            try:
                inputs = b"" if ref.chunk is None else _digest(call.batch.x[0], ref.end)
                claim = await self.store.claim(claim.key, ref.start, claim.token, ref.chunk, inputs)
            except REFUSED:
                done = True  # refused: nothing was claimed
                raise
            done = claim.replay  # a replay holds nothing: nothing to store or release
            batch = call.batch
            if claim.states is not None:
                h0, c0 = unpack(claim.states, spec, ref)
                batch = Batch(batch.x, h0, c0)
            hold = None if claim.replay else _Hold(self.store, claim)
            try:
                outcome = await infer(replace(call, batch=batch))
            finally:
                if hold is not None:
                    hold.stop()
            result = outcome.results[0]
            if claim.replay:
                return outcome  # a retry of the last chunk run: answered again, applied once
            if ref.end:
                await self.store.drop(claim)
            else:
                await self.store.keep(claim, pack(result.hn, result.cn))
            done = True
            return outcome
        except (*REFUSED, StoreUnavailable) as e:
            raise self._error(e, ref) from None
        finally:
            if not done:
                # The chunk failed, or its request was cancelled, perhaps with the claim's answer still on its way:
                # released by its token (a no-op where it took nothing), the sequence stays as it was.
                await asyncio.shield(_release(self.store, claim))

    def _error(self, e: Exception, ref: SequenceRef) -> Exception:
        """The store's error as the pipeline's, worded with the client's own id."""
        name = repr(ref.id)
        if isinstance(e, UnknownSequence):
            msg = f"Sequence {name} is not known here: start it first"
            return InvalidInput([error(ref.loc, msg, "sequence_unknown")])
        if isinstance(e, EndedSequence):
            msg = f"Sequence {name} ended: start it again to use its id anew"
            return InvalidInput([error(ref.loc, msg, "sequence_ended")])
        if isinstance(e, OutOfOrder):
            got = ref.chunk
            why = "was already run" if got is not None and got < e.expected else "skips ahead"
            msg = f"Chunk {got} {why}; {e.expected} is next, in sequence {name}"  # numbers first: reasons are cut
            return ChunkOutOfOrder([error(ref.chunk_loc, msg, "sequence_chunk_order", expected=e.expected)])
        if isinstance(e, ReusedChunk):
            expected = (ref.chunk or 0) + 1
            msg = f"Chunk {ref.chunk} was run with other inputs; {expected} is next (a retry resends the same chunk)"
            return ChunkOutOfOrder([error(ref.chunk_loc, msg, "sequence_chunk_reused", expected=expected)])
        if isinstance(e, ExpiredSequence):
            msg = f"Sequence {name} expired after {self.store.terms.idle_s:g} s without a chunk: start it again"
            return InvalidInput([error(ref.loc, msg, "sequence_expired")])
        if isinstance(e, BusySequence):
            busy = SequenceBusy(f"Sequence {name} is running another chunk: send the next when it is answered")
            busy.headers = {"Retry-After": str(max(1, math.ceil(e.retry_after)))}  # when its claim lapses, at most
            return busy
        if isinstance(e, StoreFull):
            if e.limit is None:
                return SequencesFull("The sequence store is full (its memory): end a sequence, or retry later")
            return SequencesFull(f"{e.limit} sequences are live, the most this server holds: end one, or retry later")
        log.warning("sequence store unavailable: %s", e)  # where and why, for the operator; not for the client
        metrics.REJECTED.labels("store_down").inc()
        return StoreDown("The sequence store cannot be reached; retry shortly")


REFUSED = (UnknownSequence, EndedSequence, ExpiredSequence, BusySequence, StoreFull, OutOfOrder, ReusedChunk)


def _digest(x: np.ndarray, end: bool) -> bytes:
    """What a replay must match: the chunk's inputs (float32, as run) and whether it ends the sequence."""
    return hashlib.blake2b(np.ascontiguousarray(x, dtype=np.float32).tobytes() + bytes([end]), digest_size=16).digest()


class _Hold:
    """Renews a running chunk's claim every third of the lease, from a third of it on (most chunks are
    answered long before: then this costs one timer)."""

    def __init__(self, store: SequenceStore, claim: Claim) -> None:
        self.store, self.claim = store, claim
        self.task: asyncio.Task[None] | None = None
        self.timer = asyncio.get_running_loop().call_later(store.terms.lease_s / 3, self._start)

    def _start(self) -> None:
        self.task = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        with contextlib.suppress(BusySequence):  # lapsed, and taken by another chunk: keep will say so
            while True:
                with contextlib.suppress(StoreUnavailable):  # a moment out of reach: try again
                    await self.store.renew(self.claim)
                await asyncio.sleep(self.store.terms.lease_s / 3)

    def stop(self) -> None:
        self.timer.cancel()
        if self.task is not None:
            self.task.cancel()


async def _release(store: SequenceStore, claim: Claim) -> None:
    with contextlib.suppress(StoreUnavailable):  # out of reach: the claim lapses by itself
        await store.release(claim)
