"""The kv index in a Redis server, shared by several gateways (``kv_index.backend: redis``).

Same semantics as ``prfaas.router.kv_index.KvIndex`` (epochs, numbered batches), kept in
Redis under ``{prefix}:``. Every operation is one Lua script, hence atomic against the other
gateways and one round trip: a batch that two gateways deliver applies once, and a lookup
checks the chain server-side against each instance that holds its first block.

Keys (``p`` = the deployment prefix; block hashes are raw bytes, ints as ``#<n>``):
  p:e  HASH instance -> epoch (decimal; compared as strings: epochs exceed 2**53, and
       Lua numbers are doubles)
  p:c  HASH instance -> cluster        p:s  HASH instance -> last batch applied
  p:o:<instance>  SET of the block hashes its current epoch holds
  p:h:<hash>      SET of the instances holding the block (absent when none); always
                  h in p:o:<i>  <=>  i in p:h:<h>
  p:n  the number of blocks with at least one holder (``len``)
  p:y  HASH instance -> '1' if hybrid (its hits need a state snapshot), else '0'
  p:z:<instance>  SET of the hashes its current epoch holds a state snapshot for (hybrid)

The scripts name keys they build from the prefix, so this needs one Redis server (or a
primary with replicas), not Redis Cluster. A server that cannot be reached costs cache
affinity, never a request: lookups answer ``{}``, writes raise ``KvIndexUnavailableError``
(workers keep their batches and resend them), and the server is not tried again for
``retry_after_s``, doubling up to ``MAX_RETRY_AFTER_S`` while it stays down. Calls are
synchronous on the gateway's event loop: one round trip per lookup and per event batch,
bounded by ``timeout_s``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from prfaas.router.kv_index import (
    Applied,
    CacheEvent,
    KvIndexUnavailableError,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
MAX_RETRY_AFTER_S = 8.0

_LIB = """
local function newer(a, b)  -- decimal strings without leading zeros: is a > b?
  return #a > #b or (#a == #b and a > b)
end
local function hold(p, h, inst)
  local key = p .. ':h:' .. h
  if redis.call('SADD', key, inst) == 1 and redis.call('SCARD', key) == 1 then
    redis.call('INCR', p .. ':n')
  end
end
local function unhold(p, h, inst)
  local key = p .. ':h:' .. h
  if redis.call('SREM', key, inst) == 1 and redis.call('EXISTS', key) == 0 then
    redis.call('DECR', p .. ':n')
  end
end
local function drop(p, inst)
  local owned = p .. ':o:' .. inst
  for _, h in ipairs(redis.call('SMEMBERS', owned)) do unhold(p, h, inst) end
  redis.call('DEL', owned, p .. ':z:' .. inst)
end
"""

# ARGV: prefix, instance, cluster, epoch, hybrid ('1' or '0')
_REGISTER = (
    _LIB
    + """
local p, inst, epoch = ARGV[1], ARGV[2], ARGV[4]
redis.call('HSET', p .. ':c', inst, ARGV[3])
redis.call('HSET', p .. ':y', inst, ARGV[5])
local cur = redis.call('HGET', p .. ':e', inst)
if cur and not newer(epoch, cur) then return 0 end
drop(p, inst)
redis.call('HSET', p .. ':e', inst, epoch)
redis.call('HSET', p .. ':s', inst, 0)
return 1
"""
)

# ARGV: prefix, instance
_REMOVE = (
    _LIB
    + """
local p, inst = ARGV[1], ARGV[2]
drop(p, inst)
redis.call('HDEL', p .. ':e', inst)
redis.call('HDEL', p .. ':c', inst)
redis.call('HDEL', p .. ':s', inst)
redis.call('HDEL', p .. ':y', inst)
return 1
"""
)

# ARGV: prefix, instance, epoch, seq, then (flag, hash) pairs: flag '1' stored, '0' evicted;
# a state snapshot keyed by the hash: '+' stored, '-' evicted
_APPLY = (
    _LIB
    + """
local p, inst, epoch, seq = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local cur = redis.call('HGET', p .. ':e', inst)
if not cur or newer(epoch, cur) then return 'unknown' end
if cur ~= epoch then return 'stale' end
if seq <= tonumber(redis.call('HGET', p .. ':s', inst) or '0') then return 'duplicate' end
redis.call('HSET', p .. ':s', inst, seq)
local owned, snaps = p .. ':o:' .. inst, p .. ':z:' .. inst
for i = 5, #ARGV, 2 do
  local flag, h = ARGV[i], ARGV[i + 1]
  if flag == '1' then
    hold(p, h, inst)
    redis.call('SADD', owned, h)
  elseif flag == '0' then
    redis.call('SREM', owned, h)
    unhold(p, h, inst)
  elseif flag == '+' then
    redis.call('SADD', snaps, h)
  else
    redis.call('SREM', snaps, h)
  end
end
return 'applied'
"""
)

# ARGV: prefix, then the request's block hashes in chain order packed into one string, each
# as (1 byte: length, the hash): one argument instead of hundreds to encode.
# Returns flat {instance, leading blocks reusable, ...} for the instances holding block 0.
# Each such candidate's own set is asked about the chain in chunks (SMISMEMBER): a few calls
# per candidate instead of one per block; the first miss ends its prefix. A hybrid one's
# snapshot set is then asked the same way, backwards from there: the last snapshot within
# the run ends its hit (none: left out).
_PREFIX_BLOCKS = """
local p, blob, chunk = ARGV[1], ARGV[2], 256
local function last_snapshot(inst, hashes, held)
  local snaps, last = p .. ':z:' .. inst, held
  while last > 0 do
    local first = math.max(1, last - 63)
    local flags = redis.call('SMISMEMBER', snaps, unpack(hashes, first, last))
    for k = #flags, 1, -1 do
      if flags[k] == 1 then return first + k - 1 end
    end
    last = first - 1
  end
  return 0
end
local result = {}
if #blob == 0 then return result end
local holders = redis.call('SMEMBERS', p .. ':h:' .. string.sub(blob, 2, 1 + string.byte(blob, 1)))
if #holders == 0 then return result end  -- the common miss: no need to unpack the chain
local hashes, pos = {}, 1
while pos <= #blob do
  local len = string.byte(blob, pos)
  hashes[#hashes + 1] = string.sub(blob, pos + 1, pos + len)
  pos = pos + 1 + len
end
for _, inst in ipairs(holders) do
  local owned, held = p .. ':o:' .. inst, #hashes
  for first = 1, #hashes, chunk do
    local flags = redis.call('SMISMEMBER', owned,
                             unpack(hashes, first, math.min(first + chunk - 1, #hashes)))
    local miss = nil
    for k = 1, #flags do
      if flags[k] == 0 then
        miss = first + k - 2  -- blocks held before the first miss
        break
      end
    end
    if miss then
      held = miss
      break
    end
  end
  if redis.call('HGET', p .. ':y', inst) == '1' then held = last_snapshot(inst, hashes, held) end
  if held > 0 then
    result[#result + 1] = inst
    result[#result + 1] = held
  end
end
return result
"""


def _hash_arg(h: Hashable) -> bytes:
    if isinstance(h, bytes) and len(h) < 256:
        return h
    if isinstance(h, int):
        return b"#%d" % h
    raise TypeError(f"block hashes are bytes (< 256) or ints, not {type(h).__name__}")


class RedisKvIndex:
    def __init__(
        self,
        url: str,
        prefix: str = "prfaas",
        timeout_s: float = 0.5,
        retry_after_s: float = 1.0,
    ) -> None:
        self.url, self.prefix = url, prefix
        self.retry_after_s = retry_after_s
        # No client-side retries: a lost server must cost one timeout, then the back-off.
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._register = self._redis.register_script(_REGISTER)
        self._remove = self._redis.register_script(_REMOVE)
        self._apply = self._redis.register_script(_APPLY)
        self._prefix_blocks = self._redis.register_script(_PREFIX_BLOCKS)
        self.up = True
        self.errors = 0  # calls that failed because the server was unreachable or refused
        self._down_until = 0.0
        self._backoff_s = retry_after_s

    def check(self) -> None:
        """Raise ``KvIndexUnavailableError`` with the cause if the server does not answer."""
        try:
            self._redis.ping()
        except redis.RedisError as e:
            raise KvIndexUnavailableError(f"kv index: Redis at {self.url} unreachable: {e}") from e

    def close(self) -> None:
        self._redis.close()

    def __len__(self) -> int:
        try:
            return int(self._call(lambda: self._redis.get(f"{self.prefix}:n")) or 0)
        except KvIndexUnavailableError:
            return 0

    def num_blocks_of(self, instance: str) -> int:
        """Blocks attributed to ``instance``'s current epoch (0 while Redis is down)."""
        try:
            return int(self._call(lambda: self._redis.scard(f"{self.prefix}:o:{instance}")))
        except KvIndexUnavailableError:
            return 0

    def register(self, instance: str, cluster: str, epoch: int = 0, hybrid: bool = False) -> None:
        args = [self.prefix, instance, cluster, str(epoch), "1" if hybrid else "0"]
        self._call(lambda: self._register(args=args))

    def remove(self, instance: str) -> None:
        self._call(lambda: self._remove(args=[self.prefix, instance]))

    def apply(self, instance: str, epoch: int, seq: int, events: Sequence[CacheEvent]) -> Applied:
        args: list[str | bytes] = [self.prefix, instance, str(epoch), str(seq)]
        for event in events:
            snapshot = len(event) == 3 and event[-1]
            flag = (b"+" if event[1] else b"-") if snapshot else (b"1" if event[1] else b"0")
            args += [flag, _hash_arg(event[0])]
        answer = self._call(lambda: self._apply(args=args))
        return cast(Applied, answer.decode() if isinstance(answer, bytes) else answer)

    def prefix_blocks(self, hashes: Sequence[Hashable]) -> dict[str, int]:
        """Instance → leading blocks of ``hashes`` it holds; ``{}`` while Redis is down."""
        if not hashes:
            return {}
        packed = b"".join(bytes((len(a),)) + a for a in map(_hash_arg, hashes))
        args = [self.prefix.encode(), packed]
        try:
            flat: list[Any] = self._call(lambda: self._prefix_blocks(args=args))
        except KvIndexUnavailableError:
            return {}
        return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def _call(self, fn: Callable[[], T]) -> T:
        if not self.up and time.monotonic() < self._down_until:
            raise KvIndexUnavailableError(f"kv index: Redis at {self.url} is down")
        try:
            result = fn()
        except redis.RedisError as e:
            self.errors += 1
            if not self.up:  # failed again after the back-off
                self._backoff_s = min(2 * self._backoff_s, MAX_RETRY_AFTER_S)
            else:
                self._backoff_s = self.retry_after_s
                logger.warning(
                    "kv index: Redis at %s failed (%s); routing without cache affinity until "
                    "it answers again",
                    self.url,
                    e,
                )
            self._down_until = time.monotonic() + self._backoff_s
            self.up = False
            raise KvIndexUnavailableError(f"kv index: Redis at {self.url}: {e}") from e
        if not self.up:
            logger.warning("kv index: Redis at %s answers again", self.url)
            self.up = True
        return result
