"""The KV cache of a hybrid model: full-attention blocks and linear-attention states together.

One manager per layer type, each with its own reuse rule: ``KVCacheManager`` (paged blocks of
the full-attention / MLA layers, partial prefix hits) and ``LinearStateManager`` (a state slot
per request, snapshots reusable at their exact length). This class only composes them:

    prefix hit of length L  =  every full-attention block up to L  AND  a snapshot at exactly L

so the hit is the longest block-cached prefix cut back to its last snapshot. Both managers
share one memory budget (``StateBudget``): KV blocks, live state slots and snapshot slots are
sized from it up front, so snapshots never take memory from KV blocks.

Blocks of a request are *prefix-cache* blocks once full and computed (registered under their
hash, reusable after the request ends); its partial tail block is a *transfer* block: it
carries the tail to the decode side and returns to the pool when the request is released.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prfaas.kvcache.block_pool import BlockPool, CacheEvent
from prfaas.kvcache.hashing import BlockHash
from prfaas.kvcache.linear_state import LinearStateManager, StatePlan
from prfaas.kvcache.manager import KVCacheManager


@dataclass(frozen=True)
class StateCacheConfig:
    """Linear-state knobs of a hybrid model's cache (ignored for dense models).

    ``snapshot_interval``: tokens between snapshots, a multiple of the block size (a
    snapshot is also taken at each prompt's last block boundary).
    ``snapshot_memory_fraction``: share of the KV memory budget snapshots may hold;
    ``max_snapshots`` overrides it with a count. ``num_live_states``: states for requests
    holding KV at once (running or parked); default the engine's ``max_num_seqs``.
    """

    snapshot_interval: int = 256
    snapshot_memory_fraction: float = 0.1
    max_snapshots: int | None = None
    num_live_states: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.snapshot_memory_fraction < 1.0:
            raise ValueError("snapshot_memory_fraction must be in [0, 1)")
        if self.max_snapshots is not None and self.max_snapshots < 0:
            raise ValueError("max_snapshots must be >= 0")
        if self.num_live_states is not None and self.num_live_states <= 0:
            raise ValueError("num_live_states must be positive")


@dataclass(frozen=True)
class StateBudget:
    """How one memory budget is split: KV blocks, live state slots, snapshot slots."""

    num_blocks: int
    num_live_states: int
    max_snapshots: int

    @classmethod
    def split(
        cls,
        budget_bytes: int,
        block_bytes: int,
        state_bytes: int,
        config: StateCacheConfig,
        max_num_seqs: int,
        num_blocks: int | None = None,
    ) -> StateBudget:
        """Snapshots get their fraction of the budget, live states one per sequence, KV blocks
        the rest. ``num_blocks``, when given, fixes the block count instead, and snapshots get
        their fraction of blocks plus snapshots."""
        live = config.num_live_states or max_num_seqs
        snapshots = config.max_snapshots
        if snapshots is None:
            fraction = config.snapshot_memory_fraction
            if num_blocks is not None:
                budget_bytes = int(num_blocks * block_bytes / (1.0 - fraction))
            snapshots = int(budget_bytes * fraction) // max(1, state_bytes)
        if num_blocks is None:
            num_blocks = (budget_bytes - (live + snapshots) * state_bytes) // max(1, block_bytes)
            if num_blocks <= 0:
                raise ValueError(
                    f"a KV budget of {budget_bytes} bytes cannot hold {live} live states and "
                    f"{snapshots} snapshots of {state_bytes} bytes plus any KV block"
                )
        return cls(num_blocks, live, snapshots)


class HybridKVCacheManager:
    """Same interface as ``KVCacheManager`` (the scheduler drives either), plus state slots."""

    def __init__(
        self,
        budget: StateBudget,
        block_size: int,
        snapshot_interval: int,
        enable_prefix_caching: bool = True,
    ) -> None:
        self.blocks = KVCacheManager(budget.num_blocks, block_size, enable_prefix_caching)
        self.states = LinearStateManager(
            budget.num_live_states + budget.max_snapshots,
            budget.max_snapshots if enable_prefix_caching else 0,
            snapshot_interval,
            block_size,
        )
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching

    @property
    def pool(self) -> BlockPool:
        return self.blocks.pool

    @property
    def num_free_blocks(self) -> int:
        return self.blocks.num_free_blocks

    @property
    def usage(self) -> float:
        return self.blocks.usage

    def block_table(self, request_id: str) -> list[int]:
        return self.blocks.block_table(request_id)

    def state_slot(self, request_id: str) -> int | None:
        return self.states.live_slot(request_id)

    def has_request(self, request_id: str) -> bool:
        return self.blocks.has_request(request_id)

    def find_prefix(self, hashes: Sequence[BlockHash], num_tokens: int) -> list[int]:
        """Cached blocks of the longest prefix that also has a state snapshot at its end."""
        hit = self.blocks.find_prefix(hashes, num_tokens)
        return hit[: self.states.longest_hit(hashes, len(hit))]

    def allocate(self, request_id: str, num_tokens: int, prefix_blocks: Sequence[int] = ()) -> bool:
        """As ``KVCacheManager.allocate``; a new request also takes a live state slot, to be
        loaded from the snapshot at the end of ``prefix_blocks`` (from ``find_prefix``)."""
        if self.blocks.has_request(request_id):
            return self.blocks.allocate(request_id, num_tokens)
        snapshot = self.pool.hashes[prefix_blocks[-1]] if prefix_blocks else None
        if not self.states.can_allocate(snapshot):
            return False
        if not self.blocks.allocate(request_id, num_tokens, prefix_blocks):
            return False
        if not self.states.allocate(request_id, snapshot):  # pragma: no cover - checked above
            self.blocks.free(request_id)
            return False
        return True

    def plan_state(
        self,
        request_id: str,
        start: int,
        end: int,
        hashes: Sequence[BlockHash],
        prompt_len: int,
    ) -> StatePlan | None:
        return self.states.plan(request_id, start, end, hashes, prompt_len)

    def cache_blocks(
        self, request_id: str, hashes: Sequence[BlockHash], num_computed_tokens: int
    ) -> None:
        self.blocks.cache_blocks(request_id, hashes, num_computed_tokens)
        self.states.commit(request_id, num_computed_tokens)

    def free(self, request_id: str) -> None:
        self.blocks.free(request_id)
        self.states.free(request_id)

    def reset_cache(self) -> int:
        """Forget every unreferenced cached block and unpinned snapshot (weights changed)."""
        return self.pool.reset_cache() + self.states.reset_cache()

    def drain_events(self) -> list[CacheEvent]:
        """Block events, then snapshot events (``snapshot=True``). The kv index keeps the two
        kinds apart, so only the order within each kind matters."""
        return self.blocks.drain_events() + self.states.drain_events()

    def check_integrity(self) -> None:
        self.blocks.check_integrity()
        self.states.check_integrity()
        if set(self.blocks.request_ids()) != set(self.states.request_ids()):
            raise AssertionError("requests holding blocks differ from those holding states")
