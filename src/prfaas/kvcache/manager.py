"""Per-request block tables over one block pool, with prefix reuse (full-attention layers).

A request owns ``ceil(num_tokens / block_size)`` blocks; block ``i`` holds its tokens
``[i * block_size, (i + 1) * block_size)`` in every full-attention layer. Blocks at the front
may be shared with other requests (a prefix hit); only *full* and *computed* blocks are ever
registered in the cache, so a shared block is never written again.

This manager knows block ids and hashes, never tensors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from prfaas.kvcache.block_pool import BlockPool, CacheEvent
from prfaas.kvcache.hashing import BlockHash
from prfaas.kvcache.linear_state import StatePlan


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks)
        self._tables: dict[str, list[int]] = {}
        # Number of leading blocks of each request already registered in the cache.
        self._num_cached: dict[str, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by some request (cached-but-free blocks count free)."""
        return 1.0 - self.pool.num_free / self.pool.num_blocks

    def block_table(self, request_id: str) -> list[int]:
        return self._tables[request_id]

    def has_request(self, request_id: str) -> bool:
        return request_id in self._tables

    def request_ids(self) -> list[str]:
        return list(self._tables)

    def state_slot(self, request_id: str) -> int | None:
        """No linear-attention layers, so no state slot (see ``HybridKVCacheManager``)."""
        return None

    def plan_state(
        self,
        request_id: str,
        start: int,
        end: int,
        hashes: Sequence[BlockHash],
        prompt_len: int,
    ) -> StatePlan | None:
        return None

    def find_prefix(self, hashes: Sequence[BlockHash], num_tokens: int) -> list[int]:
        """Cached blocks matching the longest prefix of ``hashes``.

        At most ``num_tokens - 1`` tokens are taken from the cache: the last prompt token is
        always computed, because its logits choose the first output token.
        """
        if not self.enable_prefix_caching:
            return []
        max_blocks = (num_tokens - 1) // self.block_size
        hit: list[int] = []
        for block_hash in hashes[:max_blocks]:
            block_id = self.pool.lookup(block_hash)
            if block_id is None:
                break
            hit.append(block_id)
        return hit

    def allocate(self, request_id: str, num_tokens: int, prefix_blocks: Sequence[int] = ()) -> bool:
        """Make the request own blocks for ``num_tokens`` tokens; on its first call take a
        reference on ``prefix_blocks`` (from ``find_prefix``) first.

        Returns False and changes nothing when the pool lacks free blocks.
        """
        table = self._tables.get(request_id)
        if table is None:
            if prefix_blocks:
                # Reviving a cached-but-free prefix block also takes it out of the free queue.
                num_revived = sum(1 for b in prefix_blocks if self.pool.ref_counts[b] == 0)
            else:
                num_revived = 0
            num_new = cdiv(num_tokens, self.block_size) - len(prefix_blocks)
            if num_new < 0:
                raise ValueError("prefix longer than the request")
            if num_new + num_revived > self.pool.num_free:
                return False
            self.pool.touch(prefix_blocks)
            self._tables[request_id] = list(prefix_blocks) + self.pool.allocate(num_new)
            self._num_cached[request_id] = len(prefix_blocks)
            return True
        num_new = cdiv(num_tokens, self.block_size) - len(table)
        if num_new <= 0:
            return True
        if num_new > self.pool.num_free:
            return False
        table.extend(self.pool.allocate(num_new))
        return True

    def cache_blocks(
        self, request_id: str, hashes: Sequence[BlockHash], num_computed_tokens: int
    ) -> None:
        """Register the request's blocks that are full and computed under their hashes."""
        if not self.enable_prefix_caching:
            return
        table = self._tables[request_id]
        num_full = min(num_computed_tokens // self.block_size, len(hashes), len(table))
        start = self._num_cached[request_id]
        for i in range(start, num_full):
            self.pool.cache(table[i], hashes[i])
        self._num_cached[request_id] = max(start, num_full)

    def free(self, request_id: str) -> None:
        """Release the request's blocks (tail first, so its tail is evicted first)."""
        table = self._tables.pop(request_id)
        del self._num_cached[request_id]
        self.pool.free(reversed(table))

    def reset_cache(self) -> int:
        """Forget every unreferenced cached block (a drained model version's caches)."""
        return self.pool.reset_cache()

    def drain_events(self) -> list[CacheEvent]:
        return self.pool.drain_events()

    def check_integrity(self) -> None:
        owners: Counter[int] = Counter()
        for table in self._tables.values():
            owners.update(table)
        self.pool.check_integrity(owners)


class CacheManager(Protocol):
    """What the engine and its scheduler need of a KV cache manager: ``KVCacheManager`` for
    models with full-attention layers only, ``HybridKVCacheManager`` when some layers keep a
    linear-attention state."""

    block_size: int
    enable_prefix_caching: bool

    @property
    def pool(self) -> BlockPool: ...
    @property
    def num_free_blocks(self) -> int: ...
    @property
    def usage(self) -> float: ...
    def block_table(self, request_id: str) -> list[int]: ...
    def state_slot(self, request_id: str) -> int | None: ...
    def has_request(self, request_id: str) -> bool: ...
    def find_prefix(self, hashes: Sequence[BlockHash], num_tokens: int) -> list[int]: ...
    def allocate(
        self, request_id: str, num_tokens: int, prefix_blocks: Sequence[int] = ()
    ) -> bool: ...
    def plan_state(
        self,
        request_id: str,
        start: int,
        end: int,
        hashes: Sequence[BlockHash],
        prompt_len: int,
    ) -> StatePlan | None: ...
    def cache_blocks(
        self, request_id: str, hashes: Sequence[BlockHash], num_computed_tokens: int
    ) -> None: ...
    def free(self, request_id: str) -> None: ...
    def reset_cache(self) -> int: ...
    def drain_events(self) -> list[CacheEvent]: ...
    def check_integrity(self) -> None: ...
