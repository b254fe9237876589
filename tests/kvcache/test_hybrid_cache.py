"""Linear-state slots and the hybrid prefix rule, in plain Python (no torch, no model)."""

from __future__ import annotations

import pytest

from prfaas.kvcache.hashing import block_hashes, root_hash
from prfaas.kvcache.hybrid import HybridKVCacheManager, StateBudget, StateCacheConfig
from prfaas.kvcache.linear_state import LinearStateManager

BLOCK = 4
ROOT = root_hash("model")


def _hashes(tokens: list[int]) -> list[bytes]:
    return block_hashes(tokens, BLOCK, ROOT)


def _compute(kv: HybridKVCacheManager, rid: str, tokens: list[int]) -> int:
    """Admit ``tokens`` as one chunk, 'compute' it, commit; returns the cached prefix length."""
    hashes = _hashes(tokens)
    prefix = kv.find_prefix(hashes, len(tokens))
    assert kv.allocate(rid, len(tokens), prefix)
    start = len(prefix) * BLOCK
    plan = kv.plan_state(rid, start, len(tokens), hashes, len(tokens))
    assert plan is not None
    assert (plan.source is not None) == bool(prefix)
    kv.cache_blocks(rid, hashes, len(tokens))
    kv.check_integrity()
    return start


def _manager(
    num_blocks: int = 32, live: int = 2, snapshots: int = 8, interval: int = 8
) -> HybridKVCacheManager:
    budget = StateBudget(num_blocks, live, snapshots)
    return HybridKVCacheManager(budget, BLOCK, snapshot_interval=interval)


def test_hit_needs_blocks_and_a_snapshot_at_exactly_that_length() -> None:
    kv = _manager(interval=8)  # snapshots at 8, 16, ... and at each prompt's last boundary
    tokens = list(range(22))  # boundaries 8, 16 (interval) and 20 (prompt end)
    assert _compute(kv, "a", tokens) == 0
    kv.free("a")
    assert _compute(kv, "b", tokens[:20] + [99]) == 20  # snapshot at 20
    kv.free("b")
    assert _compute(kv, "c", tokens[:14] + [98, 97]) == 8  # blocks up to 12, snapshot at 8
    kv.free("c")
    assert kv.states.num_snapshots == 4  # 8, 16, 20 and c's own 16 (other content)
    kv.check_integrity()


def test_snapshot_cap_evicts_least_recently_used_and_never_takes_blocks() -> None:
    kv = _manager(num_blocks=32, snapshots=2, interval=4)
    for i in range(5):
        _compute(kv, f"r{i}", [100 * i + t for t in range(9)])
        kv.free(f"r{i}")
        assert kv.states.num_snapshots <= 2
    assert kv.num_free_blocks == 32
    # The last request's two latest snapshots (8 and 4) are the survivors.
    assert _compute(kv, "again", [400 + t for t in range(8)] + [7]) == 8


def test_live_states_evict_snapshots_but_wait_when_all_are_live() -> None:
    kv = _manager(live=1, snapshots=1, interval=4)
    _compute(kv, "a", list(range(9)))
    kv.free("a")
    assert kv.states.num_snapshots == 1
    assert kv.allocate("x", 5) and kv.allocate("y", 5)  # y's slot is the snapshot's
    assert kv.states.num_snapshots == 0
    assert not kv.allocate("z", 5)  # every slot live: wait, change nothing
    kv.check_integrity()
    assert kv.num_free_blocks == 32 - 4


def test_a_snapshot_being_loaded_is_pinned() -> None:
    kv = _manager(live=1, snapshots=1, interval=4)
    _compute(kv, "a", list(range(9)))
    kv.free("a")
    hashes = _hashes(list(range(8)) + [50])
    prefix = kv.find_prefix(hashes, 9)
    assert len(prefix) == 2 and kv.allocate("b", 9, prefix)
    assert not kv.allocate("c", 3)  # the only other slot holds b's pinned source
    kv.check_integrity()
    kv.cache_blocks("b", hashes, 9)  # b's first chunk ran: the pin is released
    assert kv.allocate("c", 3)
    kv.check_integrity()


def test_failed_allocation_changes_nothing() -> None:
    kv = _manager(num_blocks=3, live=1, snapshots=0)
    assert not kv.allocate("big", 4 * BLOCK)
    assert kv.states.num_free_slots == 1 and kv.num_free_blocks == 3
    kv.check_integrity()


def test_budget_split_keeps_snapshots_to_their_share() -> None:
    config = StateCacheConfig(snapshot_memory_fraction=0.25)
    budget = StateBudget.split(1000, block_bytes=10, state_bytes=50, config=config, max_num_seqs=4)
    assert (budget.max_snapshots, budget.num_live_states) == (5, 4)
    assert budget.num_blocks == (1000 - 9 * 50) // 10
    with pytest.raises(ValueError):
        StateBudget.split(100, 10, 50, StateCacheConfig(), max_num_seqs=4)
    # A fixed block count: snapshots get a quarter of blocks plus snapshots (800 + 250 bytes).
    fixed = StateBudget.split(10**9, 10, 50, config, max_num_seqs=4, num_blocks=80)
    assert (fixed.num_blocks, fixed.max_snapshots) == (80, 5)


def test_snapshot_interval_must_be_whole_blocks() -> None:
    with pytest.raises(ValueError):
        LinearStateManager(4, 2, snapshot_interval=6, block_size=BLOCK)
