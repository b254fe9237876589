"""Router.route end to end over a static fleet and a real kv index."""

import dataclasses

import pytest

from prfaas.router.kv_index import KvIndex
from prfaas.router.policies import PrfaasThreshold
from prfaas.router.router import RINGS_KEPT, Router, RouterConfig
from prfaas.router.types import InstanceView, NoRouteError, RouteRequest, RouterState
from tests.router.fleet import StaticFleet

BLOCK = 100


def make(
    mode: str = "scarce", cache_aware: bool = True, fleet: StaticFleet | None = None
) -> tuple[Router, KvIndex, StaticFleet]:
    fleet = fleet or StaticFleet()
    index = KvIndex()
    for inst in fleet.instance_views:
        index.register(inst.name, inst.cluster)
    state = RouterState(1000.0, "scarce" if mode == "scarce" else "abundant")
    config = RouterConfig(block_tokens=BLOCK, cache_aware=cache_aware)
    return Router(config, PrfaasThreshold(), fleet, index, state), index, fleet


def test_short_local_long_remote_decode_least_loaded() -> None:
    router, _, _ = make()
    short = router.route(RouteRequest("a", "t", 1000, tuple(range(10))))
    assert (short.path, short.prefill_cluster, short.decode_instance) == ("pd-p", "pd", "pd-d1")
    long = router.route(RouteRequest("b", "t", 1001, tuple(range(10))))
    assert long.path == "prfaas" and long.prefill_instance in ("r0", "r1")
    assert long.cached_tokens == 0 and long.incremental_tokens == 1001


def test_cached_prefix_brings_the_request_home_and_to_the_warm_instance() -> None:
    router, index, _ = make()
    index.stored("pd-p1", 0, range(6))  # 600 tokens at pd-p1
    got = router.route(RouteRequest("a", "t", 1500, tuple(range(15))))
    assert (got.path, got.prefill_instance, got.cached_tokens) == ("pd-p", "pd-p1", 600)
    assert got.incremental_tokens == 900
    assert list(router.observed_lengths) == [900]


def test_a_fully_cached_prompt_still_computes_its_last_block() -> None:
    """Like the engine: at least one token is computed, so a prompt ending on a block
    boundary reuses only the blocks before its last; one that ends inside a block reuses
    every full block."""
    router, index, _ = make()
    index.stored("pd-p0", 0, range(5))
    got = router.route(RouteRequest("a", "t", 500, tuple(range(5))))
    assert got.cached_tokens == 400 and got.incremental_tokens == 100
    got = router.route(RouteRequest("b", "t", 510, tuple(range(5))))
    assert got.cached_tokens == 500 and got.incremental_tokens == 10


def test_abundant_mode_pulls_the_remote_prefix() -> None:
    router, index, _ = make(mode="abundant")
    index.stored("r0", 0, range(8))
    got = router.route(RouteRequest("a", "t", 1500, tuple(range(15))))
    assert (got.path, got.pull_from, got.pull_tokens, got.cached_tokens) == (
        "pd-p",
        "remote",
        800,
        800,
    )


def test_residency_keeps_a_pinned_tenant_home_even_with_a_remote_cache() -> None:
    router, index, _ = make(mode="abundant")
    index.stored("r0", 0, range(100))
    pinned = RouteRequest("a", "t", 100_000, tuple(range(100)), frozenset({"pd"}))
    got = router.route(pinned)
    assert got.path == "pd-p" and got.pull_from is None and got.cached_tokens == 0
    with pytest.raises(NoRouteError):
        router.route(RouteRequest("b", "t", 10, (), frozenset({"remote"})))


def test_overloaded_warm_instance_is_skipped() -> None:
    fleet = StaticFleet()
    fleet.instance_views[1] = InstanceView("pd-p1", "pd", "prefill", load=10)
    router, index, _ = make(fleet=fleet)
    index.stored("pd-p1", 0, range(6))
    got = router.route(RouteRequest("a", "t", 1500, tuple(range(15))))
    assert got.prefill_instance == "pd-p0" and got.cached_tokens == 0


def test_unhealthy_instances_are_never_chosen_and_cache_blind_ignores_the_index() -> None:
    fleet = StaticFleet()
    fleet.instance_views = [
        dataclasses.replace(i, healthy=False) if i.name == "r0" else i for i in fleet.instance_views
    ]
    router, index, _ = make(fleet=fleet)
    for k in range(20):
        assert router.route(RouteRequest(f"r{k}", "t", 5000, (k,))).prefill_instance == "r1"
    blind, index, _ = make(cache_aware=False)
    index.stored("pd-p1", 0, range(6))
    got = blind.route(RouteRequest("a", "t", 1500, tuple(range(15))))
    assert got.path == "prfaas" and got.cached_tokens == 0


def test_a_path_with_no_healthy_prefill_instance_falls_to_the_other_path() -> None:
    fleet = StaticFleet()
    draining = {"pd-p0", "pd-p1"}  # both PD-P instances are switching to decode
    fleet.instance_views = [
        dataclasses.replace(i, healthy=False) if i.name in draining else i
        for i in fleet.instance_views
    ]
    router, _, _ = make(fleet=fleet)
    short = router.route(RouteRequest("a", "t", 100, (1,)))
    assert short.path == "prfaas" and short.prefill_instance in ("r0", "r1")
    assert short.incremental_tokens == 100
    # A tenant pinned to the PD cluster is never sent remote for it: no route at all.
    with pytest.raises(NoRouteError):
        router.route(RouteRequest("b", "t", 100, (1,), allowed_clusters=frozenset({"pd"})))


def test_the_rings_of_changing_healthy_sets_stay_bounded_and_route_alike() -> None:
    """One hash ring per set of healthy prefill instances: a cluster whose instances come and
    go makes new sets all the time, and only the last ``RINGS_KEPT`` are kept. A set whose
    ring was dropped routes as before when it comes back (the ring is rebuilt the same)."""
    prefills = [InstanceView(f"pd-p{k}", "pd", "prefill") for k in range(12)]
    fleet = StaticFleet(instance_views=[*prefills, InstanceView("pd-d0", "pd", "decode")])
    router, _, _ = make(fleet=fleet)
    first = router.route(RouteRequest("a", "t", 100, tuple(range(1))))
    for mask in range(1, 400):  # 399 distinct healthy sets
        views = [
            dataclasses.replace(p, healthy=bool(mask >> k & 1)) for k, p in enumerate(prefills)
        ]
        fleet.instance_views = [*views, InstanceView("pd-d0", "pd", "decode")]
        router.route(RouteRequest(f"r{mask}", "t", 100, tuple(range(1))))
        assert router.num_rings <= RINGS_KEPT
    fleet.instance_views = [*prefills, InstanceView("pd-d0", "pd", "decode")]
    again = router.route(RouteRequest("b", "t", 100, tuple(range(1))))
    assert again.prefill_instance == first.prefill_instance
