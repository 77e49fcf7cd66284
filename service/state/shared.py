"""The shared store: Valkey or Redis (``LSTM_STATE_URL=redis://host:6379/0``), for every worker of every
replica pointed at it, so any replica serves any chunk and a restarted server loses nothing.

A sequence is a hash (status, states as float32 bytes, the states before its last chunk, chunks run,
last use, claim and its token) that expires after twice the idle time, and a sorted set of live
sequences by last use counts them. Each operation is one Lua script: atomic on the server, one round
trip, and one clock (the server's) for every replica.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import OutOfMemoryError, RedisError

from .store import Claim, OutOfOrder, StoreUnavailable, Terms, busy, ended, expired, full, reused, unknown

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
CLAIM = (
    _NOW
    + """
local idle, max, lease, chunk = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local ended = tonumber(ARGV[8])
local h = redis.call('HMGET', KEYS[1], 'status', 'used', 'claimed_until', 'chunks')
local status, used, claimed, count = h[1], tonumber(h[2]), tonumber(h[3]), tonumber(h[4])
if status and claimed and claimed > now then return {'busy', claimed - now} end
local live = status == 'live' and now - used <= idle
if ARGV[2] == '0' then
  if (not status) or status == 'new' or (status == 'ended' and now - used > ended) then return {'unknown'} end
  if status ~= 'ended' and not live then
    redis.call('HSET', KEYS[1], 'status', 'expired')
    redis.call('HDEL', KEYS[1], 'states', 'before')
    redis.call('ZREM', KEYS[2], ARGV[1])
    return {'expired'}
  end
  local numbered = chunk >= 0 and count
  if status == 'ended' or (numbered and chunk ~= count) then
    local before = numbered and chunk == count - 1 and redis.call('HGET', KEYS[1], 'before')
    if not before then
      if status == 'ended' then return {'ended'} end
      return {'order', count}
    end
    if (redis.call('HGET', KEYS[1], 'inputs') or '') ~= ARGV[9] then return {'reused'} end
    return {'replay', before}
  end
elseif not live then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - idle - 1)
  if redis.call('ZCARD', KEYS[2]) >= max then return {'full'} end
end
local states = false
if ARGV[2] == '0' then
  states = redis.call('HGET', KEYS[1], 'states')
  redis.call('HSET', KEYS[1], 'claimed_until', now + lease, 'token', ARGV[3])
  -- a sequence from before chunks were counted starts counting at the first numbered one
  if chunk >= 0 and not count then redis.call('HSET', KEYS[1], 'chunks', chunk) end
else
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'status', 'new', 'used', now, 'claimed_until', now + lease, 'token', ARGV[3], 'chunks', 0)
  redis.call('ZADD', KEYS[2], now, ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], 2 * idle)
if states then return {'ok', states} end
return {'ok'}
"""
)
# The states run last become those before the next; the count goes up where it is kept.
_NEXT = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 0 end
local last = redis.call('HGET', KEYS[1], 'states')
if last then redis.call('HSET', KEYS[1], 'before', last) else redis.call('HDEL', KEYS[1], 'before') end
if redis.call('HEXISTS', KEYS[1], 'chunks') == 1 then redis.call('HINCRBY', KEYS[1], 'chunks', 1) end
"""
KEEP = (
    _NOW
    + _NEXT
    + """
redis.call('HSET', KEYS[1], 'status', 'live', 'states', ARGV[3], 'inputs', ARGV[5], 'used', now, 'claimed_until', 0)
redis.call('HDEL', KEYS[1], 'token')
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[4]))
return 1
"""
)
DROP = (
    _NOW
    + _NEXT
    + """
redis.call('HSET', KEYS[1], 'status', 'ended', 'inputs', ARGV[4], 'used', now, 'claimed_until', 0)
redis.call('HDEL', KEYS[1], 'states', 'token')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""
)
RENEW = (
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'claimed_until', now + tonumber(ARGV[3]))
return 1
"""
)
RELEASE = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[1], 'status') == 'new' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[1], 'claimed_until', 0)
  redis.call('HDEL', KEYS[1], 'token')
end
return 1
"""
PREFIX = "lstm:"
MAX_CONNECTIONS = 64  # per worker: a burst of chunks waits for a connection rather than open thousands


class SharedStore:
    def __init__(self, url: str, terms: Terms, timeout_s: float = 2.0) -> None:
        self.terms = terms
        self.url = url
        for ours, theirs in (("valkey://", "redis://"), ("valkeys://", "rediss://")):
            if url.startswith(ours):
                url = theirs + url.removeprefix(ours)
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        # No retries: a script sent before a timeout may still run, and a chunk's scripts must not run twice.
        self.client = aioredis.Redis(connection_pool=pool, decode_responses=False, retry=Retry(NoBackoff(), 0))
        # A store out of memory (maxmemory, noeviction) refuses a start before it writes anything, and lets
        # live sequences go on and end: those writes replace or free what is there.
        self._start = self.client.register_script(f"#!lua\n{CLAIM}")
        self._claim, self._renew, self._keep, self._drop, self._release = (
            self.client.register_script(f"#!lua flags=allow-oom\n{s}") for s in (CLAIM, RENEW, KEEP, DROP, RELEASE)
        )
        self.prefix = PREFIX  # of every key this store writes

    def _keys(self, key: str) -> list[str]:
        return [f"{self.prefix}seq:{key}", f"{self.prefix}live"]

    async def _run(self, script: object, keys: list[str], args: list[object]) -> object:
        try:
            return await script(keys=keys, args=args)  # type: ignore[operator]
        except OutOfMemoryError:
            raise full(keys[0], None) from None
        except RedisError as e:
            raise StoreUnavailable(f"the sequence store at {self._where()} is not reachable: {e}") from None

    def _where(self) -> str:
        return self.url.split("@")[-1].split("?")[0]  # never a password

    async def claim(self, key: str, start: bool, token: str, chunk: int | None = None, inputs: bytes = b"") -> Claim:
        t = self.terms
        number = -1 if chunk is None else chunk
        args = [key, int(start), token, _ms(t.idle_s), t.max_sequences, _ms(t.lease_s), number, _ms(t.ended_s), inputs]
        answer = await self._run(self._start if start else self._claim, self._keys(key), args)
        assert isinstance(answer, list)
        outcome = answer[0].decode()
        if outcome == "busy":
            raise busy(key, int(answer[1]) / 1000)
        if outcome == "unknown":
            raise unknown(key)
        if outcome == "expired":
            raise expired(key, t.idle_s)
        if outcome == "full":
            raise full(key, t.max_sequences)
        if outcome == "ended":
            raise ended(key)
        if outcome == "order":
            raise OutOfOrder(key, int(answer[1]))
        if outcome == "reused":
            raise reused(key)
        if outcome == "replay":
            return Claim(key, token, bytes(answer[1]), replay=True)
        return Claim(key, token, bytes(answer[1]) if len(answer) > 1 else None, inputs=inputs)

    async def renew(self, claim: Claim) -> None:
        args = [claim.key, claim.token, _ms(self.terms.lease_s)]
        if not await self._run(self._renew, self._keys(claim.key), args):
            raise busy(claim.key, self.terms.lease_s)  # it lapsed, and another chunk took the sequence

    async def keep(self, claim: Claim, states: bytes) -> None:
        args = [claim.key, claim.token, states, _ms(self.terms.idle_s), claim.inputs]
        if not await self._run(self._keep, self._keys(claim.key), args):
            raise busy(claim.key, self.terms.lease_s)  # the claim lapsed and another chunk took the sequence

    async def drop(self, claim: Claim) -> None:
        args = [claim.key, claim.token, _ms(self.terms.ended_s), claim.inputs]
        if not await self._run(self._drop, self._keys(claim.key), args):
            raise busy(claim.key, self.terms.lease_s)  # the claim lapsed and another chunk took the sequence

    async def release(self, claim: Claim) -> None:
        await self._run(self._release, self._keys(claim.key), [claim.key, claim.token])

    async def close(self) -> None:
        await self.client.aclose(close_connection_pool=True)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
