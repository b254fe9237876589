"""Prefix-cache events for the kv index, under prfaas's salted block hashes, for a vLLM
instance.

vLLM keys its prefix cache by the prompt's full blocks and the request's ``cache_salt``
(the tenant salt, which the worker always passes); prfaas keys the same blocks by
``kvcache.hashing.block_hashes`` under ``root_hash(fingerprint, tenant salt)``. Once vLLM has
computed (or landed) a prompt, its full blocks are in vLLM's cache: ``stored`` events for
those not reported yet. vLLM evicts least-recently-used blocks and never holds more than its
pool, so when the reported set outgrows the pool the oldest are reported ``removed``: an
upper bound on what vLLM holds, not a record of its evictions (the kv index may claim a
block vLLM has already evicted; the engine's own ``cached_tokens`` stays exact). Plain
Python: no vLLM, no torch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from prfaas.kvcache.hashing import block_hashes, root_hash
from prfaas.messages import CacheEventMsg

MAX_PENDING = 65536


class CacheReport:
    def __init__(self, fingerprint: str, block_size: int, capacity_blocks: int) -> None:
        if capacity_blocks <= 0:
            raise ValueError(f"capacity_blocks must be positive, got {capacity_blocks}")
        self.fingerprint, self.block_size = fingerprint, block_size
        self.capacity_blocks = capacity_blocks
        self._held: OrderedDict[bytes, None] = OrderedDict()  # least recently used first
        self._pending: list[CacheEventMsg] = []

    def computed(self, prompt_token_ids: Sequence[int], tenant_salt: bytes) -> None:
        """vLLM now holds this prompt's full blocks (it just computed or landed them)."""
        root = root_hash(self.fingerprint, tenant_salt)
        for h in block_hashes(prompt_token_ids, self.block_size, root):
            if h in self._held:
                self._held.move_to_end(h)
                continue
            self._held[h] = None
            self._add(CacheEventMsg(block_hash=h.hex(), stored=True))
        while len(self._held) > self.capacity_blocks:
            evicted, _ = self._held.popitem(last=False)
            self._add(CacheEventMsg(block_hash=evicted.hex(), stored=False))

    def _add(self, event: CacheEventMsg) -> None:
        self._pending.append(event)
        if len(self._pending) > MAX_PENDING:  # nobody drains: keep the newest
            del self._pending[: len(self._pending) - MAX_PENDING]

    def drain(self) -> list[CacheEventMsg]:
        events, self._pending = self._pending, []
        return events
