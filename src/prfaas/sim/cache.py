"""A per-instance block-level prefix cache with LRU eviction, publishing to the kv index.

Blocks are trace ``hash_ids`` (one per ``block_tokens`` tokens; ids chain, so equal ids
mean equal prefixes). A hit is the longest run of leading blocks present, as in the
planner's prefix-hit model (``planner/trace.py``); hits and inserts refresh recency, leaf
first, so eviction takes a chain's tail before its root (a hole at the root would waste
the whole chain).
Every store and eviction is reported to the kv index under the instance's epoch, exactly
the events a live worker publishes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from prfaas.router.kv_index import KvIndex


class BlockLru:
    def __init__(self, instance: str, capacity_blocks: int, index: KvIndex, epoch: int) -> None:
        self.instance, self.capacity_blocks = instance, capacity_blocks
        self._index, self._epoch = index, epoch
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def hit_blocks(self, hash_ids: Sequence[int]) -> int:
        blocks = self._blocks
        hits = 0
        for h in hash_ids:
            if h not in blocks:
                break
            hits += 1
        for h in reversed(hash_ids[:hits]):
            blocks.move_to_end(h)
        return hits

    def insert(self, hash_ids: Sequence[int]) -> None:
        if self.capacity_blocks <= 0:
            return
        blocks = self._blocks
        new = [h for h in hash_ids if h not in blocks]
        for h in reversed(hash_ids):  # the chain's root ends most recent: leaves go first
            blocks[h] = None
            blocks.move_to_end(h)
        evicted = []
        while len(blocks) > self.capacity_blocks:
            evicted.append(blocks.popitem(last=False)[0])
        if new:
            self._index.stored(self.instance, self._epoch, new)
        if evicted:
            self._index.evicted(self.instance, self._epoch, evicted)
