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
- Event batches (``apply``) are numbered per (instance, epoch): a batch applies only if its
  number is above the last one applied, so a batch delivered twice (two gateways, or a
  retry) applies once, and one that arrives after a later batch is dropped rather than
  applied out of order. A new epoch starts the numbering over.
- Hybrid instances (registered with ``hybrid=True``: linear-attention layers) can reuse a
  prefix only where they hold a state snapshot at its exact end (``docs/hybrid.md``). Their
  snapshot events (``snapshot=True``, keyed by the hash of the block the prefix ends with)
  fill ``_snapshots[instance]``, under the same epoch and batch rules as blocks; for them
  ``prefix_blocks`` answers the largest ``j`` <= their block run with a snapshot keyed by
  ``hashes[j - 1]`` (instances with no such ``j`` are left out). Snapshots have no holder
  map: a lookup asks only the few hybrid candidates, walking back from their run's end,
  where the snapshot of a long hit usually is. Dense instances are answered as before.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Literal, Protocol

# What ``apply`` did with a batch: ``unknown`` (the index has no such instance, or an older
# epoch of it: it must be registered first), ``stale`` (a newer epoch is registered: the
# batch is from a process that is gone), ``duplicate`` (not newer than the last applied).
Applied = Literal["applied", "duplicate", "stale", "unknown"]
# (block hash, True if stored / False if evicted[, True if about the state snapshot keyed
# by that hash rather than the block: hybrid instances]); a pair is a block event.
CacheEvent = tuple[Hashable, bool] | tuple[Hashable, bool, bool]


class KvIndexUnavailableError(RuntimeError):
    """A shared kv index could not be reached; the caller routes without cache affinity."""


class KvIndexBackend(Protocol):
    """What the router and the gateway's fleet need from a kv index.

    ``KvIndex`` (in this process, the default) and the gateway's ``RedisKvIndex`` (shared by
    several gateways) implement it with the same semantics, epochs and batch numbers
    included (see this module's docstring). A backend that can be unreachable raises
    ``KvIndexUnavailableError`` from ``register``, ``remove`` and ``apply``; its
    ``prefix_blocks`` never raises for that reason and answers ``{}`` (no affinity).
    Epochs are >= 0 and may exceed 2**53 (they are start times in ns).
    """

    def __len__(self) -> int: ...

    def num_blocks_of(self, instance: str) -> int: ...

    def register(
        self, instance: str, cluster: str, epoch: int = 0, hybrid: bool = False
    ) -> None: ...

    def remove(self, instance: str) -> None: ...

    def apply(self, instance: str, epoch: int, seq: int, events: Sequence[CacheEvent]) -> Applied:
        """Apply batch ``seq`` (>= 1) of the instance's cache events, in order, at most once."""
        ...

    def prefix_blocks(self, hashes: Sequence[Hashable]) -> dict[str, int]: ...


class KvIndex:
    def __init__(self) -> None:
        self._holders: dict[Hashable, set[str]] = {}
        self._by_instance: dict[str, set[Hashable]] = {}
        self._epoch: dict[str, int] = {}
        self._cluster: dict[str, str] = {}
        self._seq: dict[str, int] = {}  # the last batch applied in the instance's epoch
        self._hybrid: set[str] = set()  # instances whose hits need a snapshot
        self._snapshots: dict[str, set[Hashable]] = {}  # snapshots of the current epoch

    def __len__(self) -> int:
        return len(self._holders)

    def num_blocks_of(self, instance: str) -> int:
        """Blocks the index attributes to ``instance``'s current epoch."""
        return len(self._by_instance.get(instance, ()))

    def epoch_of(self, instance: str) -> int | None:
        return self._epoch.get(instance)

    def register(self, instance: str, cluster: str, epoch: int = 0, hybrid: bool = False) -> None:
        """Announce ``instance`` (at start or restart); a new epoch forgets its old blocks.
        ``hybrid``: its prefix hits need a state snapshot (see the module docstring)."""
        self._cluster[instance] = cluster
        if hybrid:
            self._hybrid.add(instance)
        else:
            self._hybrid.discard(instance)
        if self._epoch.get(instance, -1) < epoch:
            self._drop_instance(instance)
            self._epoch[instance] = epoch
            self._by_instance[instance] = set()
            self._snapshots[instance] = set()
            self._seq[instance] = 0

    def remove(self, instance: str) -> None:
        self._drop_instance(instance)
        self._epoch.pop(instance, None)
        self._cluster.pop(instance, None)
        self._seq.pop(instance, None)
        self._hybrid.discard(instance)

    def apply(self, instance: str, epoch: int, seq: int, events: Sequence[CacheEvent]) -> Applied:
        current = self._epoch.get(instance)
        if current is None or current < epoch:
            return "unknown"
        if current > epoch:
            return "stale"
        if seq <= self._seq[instance]:
            return "duplicate"
        self._seq[instance] = seq
        snapshots = self._snapshots[instance]
        for event in events:  # in order: a block may be evicted and stored again
            h, stored = event[0], event[1]
            if len(event) == 3 and event[-1]:
                if stored:
                    snapshots.add(h)
                else:
                    snapshots.discard(h)
            elif stored:
                self.stored(instance, epoch, (h,))
            else:
                self.evicted(instance, epoch, (h,))
        return "applied"

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
        """Instance → number of leading blocks of ``hashes`` it can reuse (only those with
        > 0): the blocks it holds, cut back to its last snapshot for a hybrid instance."""
        runs = self._block_runs(hashes)
        if not self._hybrid or self._hybrid.isdisjoint(runs):
            return runs
        for instance in self._hybrid.intersection(runs):
            snapshots = self._snapshots.get(instance, set())
            j = runs[instance]
            while j and hashes[j - 1] not in snapshots:
                j -= 1
            if j:
                runs[instance] = j
            else:
                del runs[instance]
        return runs

    def _block_runs(self, hashes: Sequence[Hashable]) -> dict[str, int]:
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
        self._snapshots.pop(instance, None)
        for h in self._by_instance.pop(instance, ()):
            holders = self._holders.get(h)
            if holders is not None:
                holders.discard(instance)
                if not holders:
                    del self._holders[h]
