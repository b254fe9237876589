"""Block pool, prefix cache and block hashes: bookkeeping invariants after every operation."""

from __future__ import annotations

import random

import pytest

from prfaas.kvcache.block_pool import BlockPool, IntegrityError, NoFreeBlocksError
from prfaas.kvcache.hashing import block_hashes, root_hash
from prfaas.kvcache.manager import KVCacheManager


def test_hash_chain_binds_model_and_tenant() -> None:
    tokens = list(range(64))
    base = block_hashes(tokens, 16, root_hash("model-a", b"tenant-1"))
    assert len(base) == 4 and len(set(base)) == 4
    assert block_hashes(tokens, 16, root_hash("model-b", b"tenant-1"))[0] != base[0]
    assert block_hashes(tokens, 16, root_hash("model-a", b"tenant-2"))[0] != base[0]
    # Same prefix, different tail: shared hashes up to the divergence only.
    other = block_hashes(tokens[:40] + [999] * 24, 16, root_hash("model-a", b"tenant-1"))
    assert other[:2] == base[:2] and other[2:] != base[2:]
    # Incremental extension equals recomputation.
    head = block_hashes(tokens[:32], 16, root_hash("model-a", b"tenant-1"))
    tail = block_hashes(tokens, 16, root_hash("model-a", b"tenant-1"), start=2, parent=head[-1])
    assert head + tail == base


def test_pool_lru_eviction_and_events() -> None:
    pool = BlockPool(4)
    a = pool.allocate(2)
    pool.cache(a[0], b"h0")
    pool.cache(a[1], b"h1")
    pool.free(reversed(a))  # tail first: a[1] is evicted before a[0]
    pool.check_integrity()
    assert pool.lookup(b"h0") == a[0] and pool.num_free == 4
    got = pool.allocate(3)  # two never-used blocks, then the LRU cached one (a[1])
    assert a[1] in got and pool.lookup(b"h1") is None and pool.lookup(b"h0") == a[0]
    pool.touch([a[0]])  # a prefix hit revives the cached free block
    assert pool.num_free == 0
    with pytest.raises(NoFreeBlocksError):
        pool.allocate(1)
    events = pool.drain_events()
    assert [(e.block_hash, e.stored) for e in events] == [
        (b"h0", True),
        (b"h1", True),
        (b"h1", False),
    ]
    pool.check_integrity({**dict.fromkeys(got, 1), a[0]: 1})
    with pytest.raises(IntegrityError):
        pool.check_integrity({a[0]: 2})


def test_double_free_is_caught() -> None:
    pool = BlockPool(2)
    (b,) = pool.allocate(1)
    pool.free([b])
    with pytest.raises(IntegrityError):
        pool.free([b])


def test_manager_random_operations_keep_integrity() -> None:
    rng = random.Random(1)
    kv = KVCacheManager(num_blocks=32, block_size=4)
    root = root_hash("m")
    live: dict[str, list[int]] = {}
    for step in range(2000):
        if live and rng.random() < 0.4:
            rid = rng.choice(sorted(live))
            kv.free(rid)
            del live[rid]
        else:
            rid = f"r{step}"
            tokens = [rng.randrange(3) for _ in range(rng.randrange(1, 30))]
            hashes = block_hashes(tokens, 4, root)
            prefix = kv.find_prefix(hashes, len(tokens))
            assert len(prefix) * 4 <= len(tokens) - 1
            if kv.allocate(rid, len(tokens), prefix):
                kv.cache_blocks(rid, hashes, len(tokens))
                live[rid] = tokens
                table = kv.block_table(rid)
                assert table[: len(prefix)] == prefix and len(table) == -(-len(tokens) // 4)
        kv.check_integrity()
    for rid in list(live):
        kv.free(rid)
    kv.check_integrity()
    assert kv.num_free_blocks == 32


def test_failed_allocation_changes_nothing() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4)
    assert kv.allocate("a", 12)
    assert not kv.allocate("b", 8)
    assert not kv.has_request("b")
    assert not kv.allocate("a", 24)
    assert len(kv.block_table("a")) == 3
    kv.check_integrity()
