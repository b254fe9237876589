"""Instance choice by estimated TTFT: the estimate, the load bound, dispatch-time counts."""

import random

import pytest

from prfaas.router.inflight import InflightPrefills, QueuedWork
from prfaas.router.instance_choice import (
    ClusterCosts,
    EstimatedTtft,
    PrefillTimeModel,
    load_bound_s,
)
from prfaas.router.kv_index import KvIndex
from prfaas.router.policies import HomogeneousPolicy
from prfaas.router.router import Router, RouterConfig
from prfaas.router.types import InstanceView, RouteRequest, RouterState
from tests.router.fleet import StaticFleet

T = PrefillTimeModel(a_s=0.5, b_s_per_token=1e-4)  # 1K tokens: 0.6 s; 10K: 1.5 s
NAMES = ("p0", "p1", "p2", "p3")


def group(names: tuple[str, ...] = NAMES) -> list[InstanceView]:
    return [InstanceView(n, "pd", "prefill") for n in names]


def choice(balance_factor: float = 1.25) -> EstimatedTtft:
    return EstimatedTtft({"pd": ClusterCosts(T)}, balance_factor)


def test_fit_recovers_a_quadratic_and_queued_time_is_the_sum_of_prefills() -> None:
    truth = PrefillTimeModel(0.44, 3e-5, 2e-10)
    points = [(float(n), truth.seconds(n)) for n in (1000, 8000, 32000, 64000, 128000)]
    fitted = PrefillTimeModel.fit(points)
    for n in (500, 12_000, 100_000):
        assert fitted.seconds(n) == pytest.approx(truth.seconds(n), rel=1e-6)
    work = QueuedWork().plus(1000).plus(20_000).plus(300)
    assert truth.queued_s(work) == pytest.approx(sum(truth.seconds(n) for n in (1000, 20_000, 300)))
    with pytest.raises(ValueError, match="3 distinct"):
        PrefillTimeModel.fit([(1.0, 1.0), (2.0, 2.0), (2.0, 2.1)])


def test_inflight_counts_add_finish_and_drop() -> None:
    inflight = InflightPrefills()
    inflight.add("a", "p0", 100)
    inflight.add("b", "p0", 50)
    inflight.add("c", "p1", 10)
    assert inflight.work("p0") == QueuedWork(2, 150, 100**2 + 50**2)
    with pytest.raises(ValueError, match="already dispatched"):
        inflight.add("a", "p1", 1)
    inflight.finish("a")
    inflight.finish("unknown")  # a prefill the router never dispatched: ignored
    assert inflight.work("p0") == QueuedWork(1, 50, 2500)
    inflight.drop_instance("p0")
    assert inflight.work("p0") == QueuedWork() and len(inflight) == 1
    inflight.finish("c")
    assert len(inflight) == 0 and inflight.work("p1") == QueuedWork()


def test_equal_caches_pick_the_instance_with_less_queued_work() -> None:
    inflight = InflightPrefills()
    inflight.add("x", "p0", 2000)  # 0.7 s queued
    inflight.add("y", "p1", 500)  # 0.55 s: fewer tokens, and what counts is time
    inflight.add("z", "p2", 1000)
    inflight.add("w", "p3", 1000)
    inflight.add("v", "p3", 10)  # two requests: 1.1 s, though only 1,010 tokens
    request = RouteRequest("r", "t", 4000)
    assert choice().pick(request, group(), {"p0": 1024, "p1": 1024}, inflight) == "p1"
    assert choice().pick(request, group(), {}, inflight) == "p1"


def test_the_cached_instance_wins_when_its_saving_outweighs_its_queue() -> None:
    request = RouteRequest("r", "t", 10_000)  # uncached: 1.5 s
    cached = {"p0": 9000}  # at p0: 1,000 incremental tokens, 0.6 s
    inflight = InflightPrefills()
    inflight.add("q", "p0", 1000)  # p0 waits 0.6 s: 1.2 s in all, under 1.5 s cold
    inflight.add("q1", "p1", 100)  # keep the mean high enough that p0 is within the bound
    assert choice(4.0).pick(request, group(), cached, inflight) == "p0"
    inflight.add("q2", "p0", 3000)  # now 0.6 + 0.8 + 0.6 = 2.0 s at p0: a cold one is faster
    assert choice(4.0).pick(request, group(), cached, inflight) == "p2"


def test_the_load_bound_is_never_exceeded_and_never_empty() -> None:
    rng = random.Random(7)
    policy = choice(1.25)
    inflight = InflightPrefills()
    for k in range(400):
        prompt = rng.randrange(100, 30_000)
        cached = {n: rng.randrange(0, prompt) for n in NAMES if rng.random() < 0.4}
        request = RouteRequest(f"r{k}", "t", prompt)
        waits = {n: T.queued_s(inflight.work(n)) for n in NAMES}
        picked = policy.pick(request, group(), cached, inflight)
        bound = load_bound_s(waits, T.seconds(prompt), 1.25)
        assert waits[picked] <= bound + 1e-9
        inflight.add(request.request_id, picked, prompt - cached.get(picked, 0))
        if rng.random() < 0.5:  # some prefills finish
            inflight.finish(f"r{rng.randrange(k + 1)}")


def test_unknown_cluster_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no prefill time model for cluster 'pd'"):
        EstimatedTtft({"remote": ClusterCosts(T)}).pick(
            RouteRequest("r", "t", 10), group(), {}, InflightPrefills()
        )


def burst_router(instance_choice: EstimatedTtft | None) -> tuple[Router, KvIndex]:
    """Four PD-P instances whose heartbeat views never change (load 0: stale for a burst);
    p0 already holds the shared prefix."""
    names = ("pd-p0", "pd-p1", "pd-p2", "pd-p3")
    fleet = StaticFleet(
        instance_views=[InstanceView(n, "pd", "prefill") for n in names]
        + [InstanceView("pd-d0", "pd", "decode")]
    )
    index = KvIndex()
    for inst in fleet.instance_views:
        index.register(inst.name, inst.cluster)
    index.stored("pd-p0", 0, range(64))  # 64 blocks = 32K tokens
    config = RouterConfig(block_tokens=512)
    router = Router(config, HomogeneousPolicy(), fleet, index, RouterState(0.0), instance_choice)
    return router, index


def test_a_burst_sharing_a_long_prefix_spreads_within_the_load_bound() -> None:
    costs = EstimatedTtft({"pd": ClusterCosts(T)}, balance_factor=1.25)
    router, _ = burst_router(costs)
    names = [f"pd-p{k}" for k in range(4)]
    picks: dict[str, int] = {}
    for k in range(50):
        prompt = 64 * 512 + 200 + k  # the shared 32K prefix + a short question
        request = RouteRequest(f"r{k}", "t", prompt, tuple(range(64)) + (1000 + k,))
        waits = {n: T.queued_s(router.inflight.work(n)) for n in names}
        decision = router.route(request)
        bound = load_bound_s(waits, T.seconds(prompt), 1.25)
        assert waits[decision.prefill_instance] <= bound + 1e-9
        picks[decision.prefill_instance] = picks.get(decision.prefill_instance, 0) + 1
    assert set(picks) == set(names)  # every instance took part of the burst
    assert picks["pd-p0"] > max(picks[n] for n in names[1:])  # the warm one took the most
    assert len(router.inflight) == 50
    for k in range(50):
        router.prefill_finished(f"r{k}")
    assert len(router.inflight) == 0


def test_chwbl_on_stale_heartbeats_sends_the_whole_burst_to_the_warm_instance() -> None:
    """Why the counts are taken at dispatch: CHWBL bounds the loads the fleet reports, and a
    burst between two heartbeats sees the same loads every time (the issue this fixes)."""
    router, _ = burst_router(None)
    picked = {
        router.route(
            RouteRequest(f"r{k}", "t", 64 * 512 + 200, tuple(range(64)) + (1000 + k,))
        ).prefill_instance
        for k in range(50)
    }
    assert picked == {"pd-p0"}
    assert len(router.inflight) == 0  # without an InstanceChoice the router records nothing
