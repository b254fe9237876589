"""Snapshot cache events: replayed into a kv index, they give exactly the engine's prefix hits.

Plain Python (no torch): a ``HybridKVCacheManager`` driven through random prompts sharing
prefixes, with slot pressure (snapshots recycled at their cap, evicted for live slots), block
evictions and resets. After every operation its drained events go into a ``KvIndex`` that
knows the instance as hybrid; the index must then answer, for any prompt, the hit
``find_prefix`` takes (the index is not told the last-token rule, so it is asked about the
blocks ``find_prefix`` may take).
"""

from __future__ import annotations

import random

import pytest

from prfaas.kvcache.block_pool import CacheEvent
from prfaas.kvcache.hashing import block_hashes, root_hash
from prfaas.kvcache.hybrid import HybridKVCacheManager, StateBudget
from prfaas.kvcache.manager import KVCacheManager
from prfaas.router.kv_index import KvIndex

BLOCK = 4
ROOT = root_hash("model")


def _hashes(tokens: list[int]) -> list[bytes]:
    return block_hashes(tokens, BLOCK, ROOT)


def _feed(index: KvIndex, seq: int, events: list[CacheEvent]) -> None:
    assert index.apply("w", 1, seq, [(e.block_hash, e.stored, e.snapshot) for e in events])


def _check(kv: HybridKVCacheManager, index: KvIndex, prompts: list[list[int]]) -> None:
    for tokens in prompts:
        hashes = _hashes(tokens)
        engine_hit = len(kv.find_prefix(hashes, len(tokens)))
        may_take = hashes[: (len(tokens) - 1) // BLOCK]
        assert index.prefix_blocks(may_take).get("w", 0) == engine_hit, tokens


def _prompt(rng: random.Random, stems: list[list[int]]) -> list[int]:
    """A prompt sharing a random part of a stem (so prefixes collide), then its own tail."""
    stem = rng.choice(stems)
    return stem[: rng.randrange(0, len(stem) + 1)] + [rng.randrange(1000, 2000)] * rng.randrange(
        1, 12
    )


@pytest.mark.parametrize("seed", range(6))
def test_replayed_events_give_the_managers_hits(seed: int) -> None:
    rng = random.Random(seed)
    kv = HybridKVCacheManager(StateBudget(24, 2, 4), BLOCK, snapshot_interval=2 * BLOCK)
    index = KvIndex()
    index.register("w", "pd", 1, hybrid=True)
    stems = [[rng.randrange(1, 50) for _ in range(30)] for _ in range(3)]
    live: list[str] = []
    for step in range(150):
        roll = rng.random()
        if roll < 0.55 or not live:
            tokens = _prompt(rng, stems)
            hashes = _hashes(tokens)
            rid = f"r{step}"
            prefix = kv.find_prefix(hashes, len(tokens))
            if kv.allocate(rid, len(tokens), prefix):
                # One chunk from the hit to the end; sometimes the step is cut short.
                end = len(tokens) if rng.random() < 0.8 else len(prefix) * BLOCK + 1
                kv.plan_state(rid, len(prefix) * BLOCK, end, hashes, len(tokens))
                kv.cache_blocks(rid, hashes, end)
                live.append(rid)
        elif roll < 0.95:
            kv.free(live.pop(rng.randrange(len(live))))
        else:
            kv.reset_cache()
        kv.check_integrity()
        _feed(index, step + 1, kv.drain_events())
        assert index._snapshots["w"] == set(kv.states._cached)  # the index mirrors the cache
        _check(kv, index, [_prompt(rng, stems) for _ in range(4)])


def test_events_name_each_snapshot_once_and_in_order() -> None:
    kv = HybridKVCacheManager(StateBudget(32, 1, 1), BLOCK, snapshot_interval=2 * BLOCK)
    tokens = list(range(9))  # snapshot points 8 (interval and prompt end): one, cap 1
    hashes = _hashes(tokens)
    assert kv.allocate("a", 9)
    kv.plan_state("a", 0, 9, hashes, 9)
    assert [e for e in kv.drain_events() if e.snapshot] == []  # pending: not reusable yet
    kv.cache_blocks("a", hashes, 9)
    kv.free("a")
    events = kv.drain_events()
    assert [(e.block_hash, e.stored) for e in events if e.snapshot] == [(hashes[1], True)]
    assert [e.block_hash for e in events if not e.snapshot] == hashes[:2]
    assert kv.allocate("b", 5) and kv.allocate("c", 5)  # c's live slot recycles the snapshot
    assert kv.drain_events() == [CacheEvent(hashes[1], stored=False, snapshot=True)]


def test_dense_managers_emit_block_events_only() -> None:
    kv = KVCacheManager(8, BLOCK)
    tokens = list(range(9))
    assert kv.allocate("a", 9)
    kv.cache_blocks("a", _hashes(tokens), 9)
    events = kv.drain_events()
    assert len(events) == 2 and not any(e.snapshot for e in events)
