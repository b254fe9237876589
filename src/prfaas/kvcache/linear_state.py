"""Linear-attention states (KDA, ...) in fixed slots, with prefix-cache snapshots. Plain Python.

A *slot* holds the state of every linear layer of one sequence at one length (the runner keeps
the tensors, one row per slot; this class only counts). A slot is in exactly one of four
places (checked by ``check_integrity``):

- free;
- *live*: the state a request computes into, one per request that holds KV;
- *pending*: a snapshot written during the current step, owned by the request writing it;
- *cached*: a committed snapshot, keyed by the block hash of the prefix it ends, LRU order.

The reuse rule, written only here: a state is valid at exactly the token count it was taken
at, so a prefix hit of ``j`` blocks needs a snapshot keyed by block ``j - 1``'s hash. Snapshots
are taken at multiples of ``snapshot_interval`` tokens and at the last block boundary of each
prompt. At most ``max_snapshots`` slots hold snapshots (cached + pending): snapshots are a
bounded cache beside the KV blocks, never eating them (vllm#45845). A request needing a live
slot evicts the least recently used unpinned snapshot when no slot is free.

Every snapshot that becomes cached, and every cached one that is dropped (recycled, evicted
for a live slot, reset), is recorded as a ``CacheEvent(hash, stored, snapshot=True)`` for
the kv index, which can then report the hits this rule allows rather than the block runs.
Pending snapshots are never announced: they are not reusable until committed.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from prfaas.kvcache.block_pool import CacheEvent, IntegrityError
from prfaas.kvcache.hashing import BlockHash


@dataclass(frozen=True)
class StatePlan:
    """What the runner does with linear states for one scheduled chunk ``[start, end)``.

    Before the chunk: the live ``slot`` is zeroed when ``start == 0``, else, when ``source`` is
    set, overwritten with that snapshot slot (a prefix hit); otherwise it continues.
    After ``n`` tokens of the sequence, for each ``(n, snapshot_slot)`` in ``snapshots``
    (``start < n <= end``): the state at exactly ``n`` tokens is copied to ``snapshot_slot``.
    """

    slot: int
    source: int | None
    snapshots: tuple[tuple[int, int], ...]


@dataclass
class _Pending:
    num_tokens: int
    block_hash: BlockHash
    slot: int


class LinearStateManager:
    def __init__(
        self, num_slots: int, max_snapshots: int, snapshot_interval: int, block_size: int
    ) -> None:
        if num_slots <= 0:
            raise ValueError(f"num_slots must be positive, got {num_slots}")
        if snapshot_interval <= 0 or snapshot_interval % block_size:
            raise ValueError(
                f"snapshot_interval {snapshot_interval} must be a positive multiple of the "
                f"block size {block_size}"
            )
        self.num_slots = num_slots
        self.max_snapshots = max(0, min(max_snapshots, num_slots))
        self.snapshot_interval = snapshot_interval
        self.block_size = block_size
        self._free: list[int] = list(range(num_slots - 1, -1, -1))  # pop() takes slot 0 first
        self._live: dict[str, int] = {}
        self._cached: OrderedDict[BlockHash, int] = OrderedDict()  # front: evicted first
        self._pending: dict[str, list[_Pending]] = {}
        # A request admitted on a snapshot pins it until its first chunk has copied it.
        self._loading: dict[str, int] = {}
        self._pins: Counter[int] = Counter()
        self._events: list[CacheEvent] = []

    @property
    def num_snapshots(self) -> int:
        return len(self._cached) + sum(len(p) for p in self._pending.values())

    @property
    def num_free_slots(self) -> int:
        return len(self._free)

    def request_ids(self) -> list[str]:
        return list(self._live)

    def live_slot(self, request_id: str) -> int:
        return self._live[request_id]

    def longest_hit(self, hashes: Sequence[BlockHash], max_blocks: int) -> int:
        """The largest ``j <= max_blocks`` with a snapshot after block ``j - 1``; 0 if none."""
        for j in range(min(max_blocks, len(hashes)), 0, -1):
            if hashes[j - 1] in self._cached:
                return j
        return 0

    def can_allocate(self, snapshot: BlockHash | None = None) -> bool:
        """Whether ``allocate(..., snapshot)`` would succeed now."""
        return bool(self._free) or self._evictable(keep=snapshot) is not None

    def allocate(self, request_id: str, snapshot: BlockHash | None) -> bool:
        """Give the request a live slot; with ``snapshot``, pin it as the state to start from.

        Returns False and changes nothing when no slot is free or evictable.
        """
        if request_id in self._live:
            raise ValueError(f"request {request_id} already holds a state slot")
        source = None if snapshot is None else self._cached[snapshot]
        if source is not None:
            self._pins[source] += 1  # before taking a slot, so it is not the one evicted
        slot = self._take_slot()
        if slot is None:
            if source is not None:
                self._unpin(source)
            return False
        self._live[request_id] = slot
        if snapshot is not None and source is not None:
            self._cached.move_to_end(snapshot)  # a hit makes it the most recently used
            self._loading[request_id] = source
        return True

    def plan(
        self,
        request_id: str,
        start: int,
        end: int,
        hashes: Sequence[BlockHash],
        prompt_len: int,
    ) -> StatePlan:
        """The chunk's state plan; reserves slots for the snapshots it will take."""
        snapshots: list[tuple[int, int]] = []
        pending = self._pending.setdefault(request_id, [])
        taken = {p.block_hash for p in pending}
        # Latest first: when slots are short, the longest prefixes are the ones worth keeping.
        for n in reversed(self._snapshot_points(start, end, prompt_len)):
            if n // self.block_size > len(hashes):
                continue
            block_hash = hashes[n // self.block_size - 1]
            if block_hash in self._cached or block_hash in taken:
                continue
            slot = self._take_snapshot_slot()
            if slot is None:
                break
            pending.append(_Pending(n, block_hash, slot))
            taken.add(block_hash)
            snapshots.append((n, slot))
        live = self._live[request_id]
        return StatePlan(live, self._loading.get(request_id), tuple(sorted(snapshots)))

    def commit(self, request_id: str, num_computed_tokens: int) -> None:
        """After a step: snapshots up to ``num_computed_tokens`` become reusable."""
        if (source := self._loading.pop(request_id, None)) is not None:
            self._unpin(source)
        keep: list[_Pending] = []
        for p in self._pending.pop(request_id, []):
            if p.num_tokens > num_computed_tokens:
                keep.append(p)
            elif p.block_hash in self._cached:  # another request committed it first
                self._free.append(p.slot)
            else:
                self._cached[p.block_hash] = p.slot
                self._events.append(CacheEvent(p.block_hash, stored=True, snapshot=True))
        if keep:
            self._pending[request_id] = keep

    def free(self, request_id: str) -> None:
        """Release the request's live slot and its uncommitted snapshots."""
        self._free.append(self._live.pop(request_id))
        if (source := self._loading.pop(request_id, None)) is not None:
            self._unpin(source)
        self._free.extend(p.slot for p in self._pending.pop(request_id, []))

    def reset_cache(self) -> int:
        """Forget every unpinned snapshot (e.g. after a weight update)."""
        dropped = 0
        for block_hash, slot in list(self._cached.items()):
            if not self._pins[slot]:
                self._free.append(self._drop(block_hash))
                dropped += 1
        return dropped

    def drain_events(self) -> list[CacheEvent]:
        """Snapshot events since the last drain, in order."""
        events, self._events = self._events, []
        return events

    def check_integrity(self) -> None:
        places: Counter[int] = Counter(self._free)
        places.update(self._live.values())
        places.update(self._cached.values())
        places.update(p.slot for ps in self._pending.values() for p in ps)
        if set(places) != set(range(self.num_slots)) or any(c != 1 for c in places.values()):
            dup = sorted(s for s, c in places.items() if c != 1)
            missing = sorted(set(range(self.num_slots)) - set(places))
            raise IntegrityError(f"state slots: duplicated {dup}, missing {missing}")
        if self.num_snapshots > self.max_snapshots:
            raise IntegrityError(f"{self.num_snapshots} snapshots, cap {self.max_snapshots}")
        cached = set(self._cached.values())
        if (
            any(slot not in cached for slot in self._pins)
            or Counter(self._loading.values()) != +self._pins
        ):
            raise IntegrityError("a pinned state slot is not a cached snapshot being loaded")
        if not set(self._loading) <= set(self._live):
            raise IntegrityError("a request loads a snapshot without a live slot")

    # ---- internals -------------------------------------------------------------------------

    def _snapshot_points(self, start: int, end: int, prompt_len: int) -> list[int]:
        """Token counts in ``(start, end]`` where a snapshot is due, ascending."""
        interval = self.snapshot_interval
        points = set(range((start // interval + 1) * interval, end + 1, interval))
        prompt_end = prompt_len // self.block_size * self.block_size
        if start < prompt_end <= end:
            points.add(prompt_end)
        return sorted(points)

    def _take_slot(self) -> int | None:
        if self._free:
            return self._free.pop()
        victim = self._evictable()
        if victim is None:
            return None
        return self._drop(victim)

    def _take_snapshot_slot(self) -> int | None:
        if self.num_snapshots < self.max_snapshots and self._free:
            return self._free.pop()
        victim = self._evictable()  # at the cap or out of slots: recycle the LRU snapshot
        return None if victim is None else self._drop(victim)

    def _drop(self, block_hash: BlockHash) -> int:
        """Forget a cached snapshot (announcing it); returns its slot, now unplaced."""
        self._events.append(CacheEvent(block_hash, stored=False, snapshot=True))
        return self._cached.pop(block_hash)

    def _evictable(self, keep: BlockHash | None = None) -> BlockHash | None:
        for block_hash, slot in self._cached.items():
            if not self._pins[slot] and block_hash != keep:
                return block_hash
        return None

    def _unpin(self, slot: int) -> None:
        self._pins[slot] -= 1
        if not self._pins[slot]:
            del self._pins[slot]
