"""The kv index: which instances hold which blocks, fed by the instances' cache events.

Invariants:
- ``_holders[h]`` is exactly the set of instances whose *current* epoch stored ``h`` and has
  not evicted it. An instance that restarts reports a higher epoch; its older entries are
  dropped at once (``_by_instance`` makes that O(its blocks)), and events carrying an older
  epoch are ignored, so a restarted instance's stale entries can never reappear.
- Lookups walk the request's hash chain and stop at the first block no remaining candidate
  holds, so a query costs O(longest cached prefix), not O(prompt). Because hashes chain, a
  holder of block ``i`` that misses block ``j < i`` (an out-of-order eviction) only counts up
  to ``j``: a prefix hit needs every block before it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence


class KvIndex:
    def __init__(self) -> None:
        self._holders: dict[Hashable, set[str]] = {}
        self._by_instance: dict[str, set[Hashable]] = {}
        self._epoch: dict[str, int] = {}
        self._cluster: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._holders)

    def num_blocks_of(self, instance: str) -> int:
        """Blocks the index attributes to ``instance``'s current epoch."""
        return len(self._by_instance.get(instance, ()))

    def epoch_of(self, instance: str) -> int | None:
        return self._epoch.get(instance)

    def register(self, instance: str, cluster: str, epoch: int = 0) -> None:
        """Announce ``instance`` (at start or restart); a new epoch forgets its old blocks."""
        self._cluster[instance] = cluster
        if self._epoch.get(instance, -1) < epoch:
            self._drop_instance(instance)
            self._epoch[instance] = epoch
            self._by_instance[instance] = set()

    def remove(self, instance: str) -> None:
        self._drop_instance(instance)
        self._epoch.pop(instance, None)
        self._cluster.pop(instance, None)

    def stored(self, instance: str, epoch: int, hashes: Iterable[Hashable]) -> None:
        owned = self._current(instance, epoch)
        if owned is None:
            return
        holders = self._holders
        for h in hashes:
            holders.setdefault(h, set()).add(instance)
            owned.add(h)

    def evicted(self, instance: str, epoch: int, hashes: Iterable[Hashable]) -> None:
        owned = self._current(instance, epoch)
        if owned is None:
            return
        for h in hashes:
            owned.discard(h)
            holders = self._holders.get(h)
            if holders is not None:
                holders.discard(instance)
                if not holders:
                    del self._holders[h]

    def prefix_blocks(self, hashes: Sequence[Hashable]) -> dict[str, int]:
        """Instance → number of leading blocks of ``hashes`` it holds (only those with > 0)."""
        if not hashes:
            return {}
        first = self._holders.get(hashes[0])
        if not first:
            return {}
        result: dict[str, int] = {}
        alive = set(first)
        for i in range(1, len(hashes)):
            holders = self._holders.get(hashes[i])
            still = alive & holders if holders else set()
            if len(still) != len(alive):
                for instance in alive - still:
                    result[instance] = i
                if not still:
                    return result
            alive = still
        for instance in alive:
            result[instance] = len(hashes)
        return result

    def cluster_prefix_blocks(self, per_instance: Mapping[str, int]) -> dict[str, int]:
        """Cluster → the longest prefix any of its instances holds."""
        result: dict[str, int] = {}
        for instance, blocks in per_instance.items():
            cluster = self._cluster[instance]
            if blocks > result.get(cluster, 0):
                result[cluster] = blocks
        return result

    def _current(self, instance: str, epoch: int) -> set[Hashable] | None:
        if self._epoch.get(instance) != epoch:
            return None  # unknown instance or a stale epoch: ignore the event
        return self._by_instance[instance]

    def _drop_instance(self, instance: str) -> None:
        for h in self._by_instance.pop(instance, ()):
            holders = self._holders.get(h)
            if holders is not None:
                holders.discard(instance)
                if not holders:
                    del self._holders[h]
