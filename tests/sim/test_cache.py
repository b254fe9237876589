"""Per-instance LRU block caches: prefix hits, leaf-first eviction, kv index events."""

from prfaas.router.kv_index import KvIndex
from prfaas.sim.cache import BlockLru


def make(capacity: int) -> tuple[BlockLru, KvIndex]:
    index = KvIndex()
    index.register("i0", "pd", 0)
    return BlockLru("i0", capacity, index, 0), index


def test_hits_are_leading_runs_and_reach_the_index() -> None:
    cache, index = make(10)
    cache.insert((1, 2, 3))
    assert cache.hit_blocks((1, 2, 9)) == 2
    assert cache.hit_blocks((9, 1, 2)) == 0
    assert index.prefix_blocks([1, 2, 3, 4]) == {"i0": 3}


def test_eviction_takes_the_tail_of_the_oldest_chain_first() -> None:
    cache, index = make(4)
    cache.insert((1, 2, 3))
    cache.insert((7, 8))  # 5 blocks > 4: the leaf 3 of the older chain goes, not its root
    assert cache.hit_blocks((1, 2, 3)) == 2
    assert index.prefix_blocks([1, 2, 3]) == {"i0": 2}
    assert index.prefix_blocks([7, 8]) == {"i0": 2}


def test_zero_capacity_caches_nothing() -> None:
    cache, index = make(0)
    cache.insert((1, 2))
    assert cache.hit_blocks((1, 2)) == 0 and len(index) == 0
