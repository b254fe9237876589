"""The block pool: a fixed set of KV blocks, their reference counts and the prefix-cache index.

Block ids are ints in ``[0, num_blocks)``; the tensors live with the runner, the pool only
counts. Invariants (checked by ``check_integrity``):

- a block with ``ref_count == 0`` is in the free queue; a block with ``ref_count > 0`` is not;
- the free queue is in eviction order: the front is evicted first. Freed blocks join at the
  back, so the least recently used cached block goes first (LRU);
- ``_cached[h] == b`` iff block ``b`` holds hash ``h``; a block with a hash may be free
  (cached but unreferenced, reusable by a prefix hit until evicted).

Every allocation and eviction is recorded as a cache event for the kv index.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prfaas.kvcache.hashing import BlockHash


class NoFreeBlocksError(RuntimeError):
    """Raised when an allocation asks for more blocks than the pool has free."""


class IntegrityError(AssertionError):
    """The pool's bookkeeping broke an invariant (a bug, never a user error)."""


@dataclass(frozen=True)
class CacheEvent:
    """A block hash became reusable here (``stored``) or stopped being so (``removed``).

    ``snapshot``: the event is about a linear-attention state snapshot keyed by the hash
    (the state after the prefix that block ends; hybrid models, ``LinearStateManager``),
    not about the KV block itself.
    """

    block_hash: BlockHash
    stored: bool
    snapshot: bool = False


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.hashes: list[BlockHash | None] = [None] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._cached: dict[BlockHash, int] = {}
        self._events: list[CacheEvent] = []

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take now (free, whether or not they hold a cached hash)."""
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def allocate(self, num: int) -> list[int]:
        """Take ``num`` blocks from the front of the free queue, evicting their cached hashes."""
        if num > len(self._free):
            raise NoFreeBlocksError(f"asked for {num} blocks, {len(self._free)} free")
        out: list[int] = []
        for _ in range(num):
            block_id, _ = self._free.popitem(last=False)
            self._evict(block_id)
            self.ref_counts[block_id] = 1
            out.append(block_id)
        return out

    def lookup(self, block_hash: BlockHash) -> int | None:
        return self._cached.get(block_hash)

    def touch(self, block_ids: Iterable[int]) -> None:
        """Take a reference on cached blocks (a prefix hit); free ones leave the free queue."""
        for block_id in block_ids:
            if self.ref_counts[block_id] == 0:
                del self._free[block_id]
            self.ref_counts[block_id] += 1

    def free(self, block_ids: Iterable[int]) -> None:
        """Drop one reference per block. Pass a request's blocks tail first, so its tail
        (least likely to be shared) is evicted before its head."""
        for block_id in block_ids:
            if self.ref_counts[block_id] <= 0:
                raise IntegrityError(f"block {block_id} freed with ref_count 0")
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] == 0:
                self._free[block_id] = None

    def cache(self, block_id: int, block_hash: BlockHash) -> None:
        """Register a full, computed block under its hash. If another block already holds the
        hash (two requests computed the same prefix), keep the first: this block stays
        unregistered and is simply freed later."""
        if self.hashes[block_id] is not None or block_hash in self._cached:
            return
        self.hashes[block_id] = block_hash
        self._cached[block_hash] = block_id
        self._events.append(CacheEvent(block_hash, stored=True))

    def reset_cache(self) -> int:
        """Forget every unreferenced cached block (e.g. after a weight update)."""
        dropped = 0
        for block_id in list(self._free):
            if self.hashes[block_id] is not None:
                self._evict(block_id)
                dropped += 1
        return dropped

    def drain_events(self) -> list[CacheEvent]:
        events, self._events = self._events, []
        return events

    def _evict(self, block_id: int) -> None:
        block_hash = self.hashes[block_id]
        if block_hash is None:
            return
        self.hashes[block_id] = None
        del self._cached[block_hash]
        self._events.append(CacheEvent(block_hash, stored=False))

    def check_integrity(self, expected_refs: Mapping[int, int] | None = None) -> None:
        """Verify every invariant; with ``expected_refs`` (block → number of owners), also
        that reference counts equal what the owners hold."""
        for block_id in range(self.num_blocks):
            ref = self.ref_counts[block_id]
            if ref < 0:
                raise IntegrityError(f"block {block_id} has ref_count {ref}")
            if (ref == 0) != (block_id in self._free):
                raise IntegrityError(
                    f"block {block_id}: ref_count {ref}, in free queue {block_id in self._free}"
                )
            if expected_refs is not None and ref != expected_refs.get(block_id, 0):
                raise IntegrityError(
                    f"block {block_id}: ref_count {ref}, owners hold "
                    f"{expected_refs.get(block_id, 0)}"
                )
        if len(self._free) != sum(1 for r in self.ref_counts if r == 0):
            raise IntegrityError("free queue has duplicates or unknown blocks")
        for block_hash, block_id in self._cached.items():
            if self.hashes[block_id] != block_hash:
                raise IntegrityError(f"cache index says block {block_id} holds a hash it lacks")
        if len(self._cached) != sum(1 for h in self.hashes if h is not None):
            raise IntegrityError("a block holds a hash missing from the cache index")
