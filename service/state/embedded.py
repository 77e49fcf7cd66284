"""The embedded store: one SQLite file that every worker of a server opens, so any worker serves any chunk.

Nothing to install (SQLite comes with Python). By default the file lives in a folder ``python -m
service`` makes for the server's life; with ``LSTM_STATE_URL=sqlite:///path/to/file.db`` it is kept
there and a restarted server goes on where it stopped. Write-ahead logging lets workers read while one
writes; each operation is one short transaction (``BEGIN IMMEDIATE``: the check and the claim cannot
interleave with another worker's), run on the event loop, which a lock held by another worker never
blocks (it is waited for in short sleeps). Starting a sequence counts the live ones: with many thousands
live, that count is the store's slowest step (milliseconds), and Valkey scales further.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from .store import (
    Claim,
    OutOfOrder,
    SequenceError,
    StoreUnavailable,
    Terms,
    busy,
    ended,
    expired,
    full,
    reused,
    unknown,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sequences (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,             -- new (its first chunk runs), live, ended, expired (tombstones)
    states BLOB,                      -- h then c, float32; NULL unless live
    used REAL NOT NULL,               -- when its last chunk was stored (or it was claimed, when new)
    claimed_until REAL NOT NULL,      -- 0: free
    token TEXT,
    chunks INTEGER,                   -- chunks run (NULL: a sequence from before they were counted)
    before BLOB,                      -- the states before the last chunk (NULL after a start)
    inputs BLOB                       -- the caller's digest of the last chunk's inputs
);
CREATE INDEX IF NOT EXISTS sequences_used ON sequences (status, used);
CREATE INDEX IF NOT EXISTS sequences_idle ON sequences (used);
"""
SWEEP_EVERY_S = 10.0  # tombstones and long-idle rows are deleted at most this often
OPEN_WAIT_S = 10.0  # how long opening the file waits for the other workers setting it up at the same start
LOCK_WAIT_S = 2.0  # how long a chunk waits for another worker's write before the store counts as unavailable


class EmbeddedStore:
    def __init__(self, path: Path, terms: Terms) -> None:
        self.terms = terms
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Workers start together and each sets the file up: at start, another's lock is waited for here
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=OPEN_WAIT_S)
            deadline = time.monotonic() + OPEN_WAIT_S
            while not self._set_up(deadline):
                time.sleep(0.01)
            # then never: a lock held by another worker is waited for in _Transaction, the event loop free
            self.db.execute("PRAGMA busy_timeout = 0")
        except (OSError, sqlite3.Error) as e:
            raise StoreUnavailable(f"the sequence store {path} cannot be opened: {e}") from None
        self._swept = 0.0

    def _set_up(self, deadline: float) -> bool:
        """Write-ahead logging, the table, and the columns a file from an earlier version lacks. False where
        another worker setting the file up at the same moment made SQLite refuse at once (it does, rather
        than wait, where two would deadlock): try again."""
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self.db.execute("BEGIN IMMEDIATE")  # one worker adds the columns; the others then see them
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(sequences)")}
            for column, kind in (("chunks", "INTEGER"), ("before", "BLOB"), ("inputs", "BLOB")):
                if column not in columns:
                    self.db.execute(f"ALTER TABLE sequences ADD COLUMN {column} {kind}")
            self.db.execute("COMMIT")
            return True
        except sqlite3.OperationalError as e:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            return False

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db, self.path)

    async def claim(self, key: str, start: bool, token: str, chunk: int | None = None, inputs: bytes = b"") -> Claim:
        now = time.time()
        t = self.terms
        async with self._transaction() as db:
            if now - self._swept > SWEEP_EVERY_S:
                self._swept = now
                db.execute(
                    "DELETE FROM sequences WHERE claimed_until < ? AND (used < ? OR (status = 'ended' AND used < ?))",
                    (now, now - 2 * t.idle_s, now - t.ended_s),
                )
            row = db.execute(
                "SELECT status, states, used, claimed_until, chunks, before, inputs FROM sequences WHERE key = ?",
                (key,),
            ).fetchone()
            if row is not None and row[3] > now:
                raise busy(key, row[3] - now)
            live = row is not None and row[0] == "live" and now - row[2] <= t.idle_s
            if not start:
                if row is None or row[0] == "new" or (row[0] == "ended" and now - row[2] > t.ended_s):
                    raise unknown(key)
                if row[0] == "live" and not live:
                    db.execute(
                        "UPDATE sequences SET status = 'expired', states = NULL, before = NULL WHERE key = ?", (key,)
                    )
                if row[0] != "ended" and not live:
                    raise expired(key, t.idle_s)
                count, before = row[4], row[5]
                numbered = chunk is not None and count is not None
                if row[0] == "ended" or (numbered and chunk != count):
                    if not numbered or chunk != count - 1 or before is None:
                        raise ended(key) if row[0] == "ended" else OutOfOrder(key, count)
                    if bytes(row[6] or b"") != inputs:
                        raise reused(key)
                    return Claim(key, token, bytes(before), replay=True)
            elif not live:
                count = db.execute(
                    "SELECT COUNT(*) FROM sequences WHERE status IN ('new', 'live') AND used >= ?", (now - t.idle_s,)
                ).fetchone()[0]
                if count >= t.max_sequences:
                    raise full(key, t.max_sequences)
            states = None if start else bytes(row[1])
            if start:
                db.execute(
                    "INSERT INTO sequences (key, status, states, used, claimed_until, token, chunks, before, inputs) "
                    "VALUES (?, 'new', NULL, ?, ?, ?, 0, NULL, NULL) ON CONFLICT (key) DO UPDATE SET status = 'new', "
                    "states = NULL, used = excluded.used, claimed_until = excluded.claimed_until, "
                    "token = excluded.token, chunks = 0, before = NULL, inputs = NULL",
                    (key, now, now + t.lease_s, token),
                )
            else:  # a sequence from before chunks were counted starts counting at the first numbered one
                adopt = chunk is not None and row[4] is None
                db.execute(
                    "UPDATE sequences SET claimed_until = ?, token = ?, chunks = ? WHERE key = ?",
                    (now + t.lease_s, token, chunk if adopt else row[4], key),
                )
        return Claim(key, token, states, inputs=inputs)

    async def renew(self, claim: Claim) -> None:
        async with self._transaction() as db:
            done = db.execute(
                "UPDATE sequences SET claimed_until = ? WHERE key = ? AND token = ?",
                (time.time() + self.terms.lease_s, claim.key, claim.token),
            ).rowcount
        if not done:
            raise busy(claim.key, self.terms.lease_s)  # it lapsed, and another chunk took the sequence

    async def keep(self, claim: Claim, states: bytes) -> None:
        async with self._transaction() as db:
            done = db.execute(
                "UPDATE sequences SET status = 'live', before = states, states = ?, chunks = chunks + 1, inputs = ?, "
                "used = ?, claimed_until = 0, token = NULL WHERE key = ? AND token = ?",
                (states, claim.inputs, time.time(), claim.key, claim.token),
            ).rowcount
        if not done:
            raise busy(claim.key, self.terms.lease_s)  # the claim lapsed and another chunk took the sequence

    async def drop(self, claim: Claim) -> None:
        """The sequence ended: remembered as ended (with the states before its last chunk, to replay it)."""
        async with self._transaction() as db:
            done = db.execute(
                "UPDATE sequences SET status = 'ended', before = states, states = NULL, chunks = chunks + 1, "
                "inputs = ?, used = ?, claimed_until = 0, token = NULL WHERE key = ? AND token = ?",
                (claim.inputs, time.time(), claim.key, claim.token),
            ).rowcount
        if not done:
            raise busy(claim.key, self.terms.lease_s)  # the claim lapsed and another chunk took the sequence

    async def release(self, claim: Claim) -> None:
        async with self._transaction() as db:
            db.execute("DELETE FROM sequences WHERE key = ? AND token = ? AND status = 'new'", (claim.key, claim.token))
            db.execute(
                "UPDATE sequences SET claimed_until = 0, token = NULL WHERE key = ? AND token = ?",
                (claim.key, claim.token),
            )

    async def close(self) -> None:
        self.db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``. Another worker's write lock is waited for with the event loop free
    (short sleeps, up to ``LOCK_WAIT_S``); the store's own errors commit what was written before them, as a
    tombstone must be; anything else rolls back. SQLite's failures become ``StoreUnavailable``."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db, self.path = db, path

    async def __aenter__(self) -> sqlite3.Connection:
        deadline = time.monotonic() + LOCK_WAIT_S
        pause = 0.0005
        while True:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                return self.db
            except sqlite3.OperationalError as e:
                if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() > deadline:
                    raise StoreUnavailable(f"the sequence store {self.path} is not usable: {e}") from None
            except sqlite3.Error as e:
                raise StoreUnavailable(f"the sequence store {self.path} is not usable: {e}") from None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            if kind is None or isinstance(exc, SequenceError):
                self.db.execute("COMMIT")
            else:
                self.db.execute("ROLLBACK")
        except sqlite3.Error as e:
            raise StoreUnavailable(f"the sequence store {self.path} is not usable: {e}") from None
        if isinstance(exc, sqlite3.Error):
            raise StoreUnavailable(f"the sequence store {self.path} is not usable: {exc}") from None
