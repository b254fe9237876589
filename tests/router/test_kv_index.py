"""The kv index: prefix walks, per-cluster maxima, eviction holes, and epochs."""

from prfaas.router.kv_index import KvIndex


def make() -> KvIndex:
    index = KvIndex()
    index.register("p0", "pd")
    index.register("p1", "pd")
    index.register("r0", "remote")
    return index


def test_longest_prefix_per_instance_and_cluster() -> None:
    index = make()
    index.stored("p0", 0, [1, 2, 3])
    index.stored("p1", 0, [1])
    index.stored("r0", 0, [1, 2, 3, 4, 5])
    held = index.prefix_blocks([1, 2, 3, 4, 9])
    assert held == {"p0": 3, "p1": 1, "r0": 4}
    assert index.cluster_prefix_blocks(held) == {"pd": 3, "remote": 4}
    assert index.prefix_blocks([7, 1, 2]) == {}
    assert index.prefix_blocks([]) == {}


def test_a_hole_in_the_chain_ends_the_prefix() -> None:
    index = make()
    index.stored("p0", 0, [1, 2, 3, 4])
    index.evicted("p0", 0, [2])
    assert index.prefix_blocks([1, 2, 3, 4]) == {"p0": 1}
    index.evicted("p0", 0, [1])
    assert index.prefix_blocks([1, 2, 3, 4]) == {}


def test_a_restart_drops_stale_entries_and_ignores_old_epochs() -> None:
    index = make()
    index.stored("p0", 0, [1, 2, 3])
    index.register("p0", "pd", epoch=1)  # restarted: its cache is empty now
    assert index.prefix_blocks([1, 2, 3]) == {}
    index.stored("p0", 0, [1, 2, 3])  # a late event from the old process
    assert index.prefix_blocks([1, 2, 3]) == {}
    index.stored("p0", 1, [1])
    assert index.prefix_blocks([1, 2, 3]) == {"p0": 1}
    index.register("p0", "pd", epoch=1)  # a repeated announcement keeps the entries
    assert index.prefix_blocks([1]) == {"p0": 1}
    index.evicted("p0", 0, [1])  # stale eviction: ignored
    assert index.prefix_blocks([1]) == {"p0": 1}


def test_unknown_instances_and_removal() -> None:
    index = make()
    index.stored("ghost", 0, [1])
    assert index.prefix_blocks([1]) == {}
    index.stored("p1", 0, [1, 2])
    assert len(index) == 2
    index.remove("p1")
    assert index.prefix_blocks([1, 2]) == {} and len(index) == 0


def test_bytes_hashes_work_like_ints() -> None:
    index = make()
    chain = [bytes([i]) * 16 for i in range(4)]
    index.stored("r0", 0, chain[:3])
    assert index.prefix_blocks(chain) == {"r0": 3}
