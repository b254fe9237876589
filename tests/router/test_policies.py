"""Path policies at the boundaries of t, in both modes, with residency."""

from prfaas.router.policies import HomogeneousPolicy, NaivePolicy, PrfaasThreshold
from prfaas.router.prefill_time import PrefillTimeModel
from prfaas.router.types import PathChoice, PathCosts, RouteRequest, RouterState

T = 1000.0


def req(prompt_len: int) -> RouteRequest:
    return RouteRequest("r", "tenant", prompt_len)


def choose(prompt_len: int, cached: dict[str, int], mode: str = "scarce") -> PathChoice:
    state = RouterState(T, "scarce" if mode == "scarce" else "abundant")
    return PrfaasThreshold().choose(req(prompt_len), cached, "pd", ["remote"], state)


def test_scarce_threshold_boundary_is_inclusive_for_pd_p() -> None:
    assert choose(1000, {}).path == "pd-p"  # l_inc == t stays local
    assert choose(1001, {}) == PathChoice("prfaas", "remote", 1001)
    assert choose(999, {}).path == "pd-p"


def test_scarce_judges_each_cluster_on_its_own() -> None:
    # 600 cached locally: l_inc at PD = 900 <= t → local, even though remote holds more.
    assert choose(1500, {"pd": 600, "remote": 1400}) == PathChoice("pd-p", "pd", 900)
    # 499 cached locally: l_inc at PD = 1001 > t → PrfaaS, computing 1500 - 1400.
    assert choose(1500, {"pd": 499, "remote": 1400}) == PathChoice("prfaas", "remote", 100)
    assert choose(1500, {"pd": 500}).path == "pd-p"


def test_abundant_uses_the_longer_prefix_and_pulls_it() -> None:
    got = choose(1500, {"pd": 0, "remote": 500}, mode="abundant")
    assert got == PathChoice("pd-p", "pd", 1000, pull_from="remote")
    got = choose(1500, {"pd": 0, "remote": 499}, mode="abundant")
    assert got == PathChoice("prfaas", "remote", 1001)
    got = choose(5000, {"pd": 3000, "remote": 100}, mode="abundant")
    assert got == PathChoice("prfaas", "remote", 2000, pull_from="pd")
    got = choose(1500, {"pd": 500, "remote": 500}, mode="abundant")
    assert got == PathChoice("pd-p", "pd", 1000)  # equal prefixes: nothing to pull


def test_residency_without_remote_clusters_is_always_local() -> None:
    state = RouterState(T, "abundant")
    for policy in (PrfaasThreshold(), NaivePolicy(), HomogeneousPolicy()):
        got = policy.choose(req(100_000), {"pd": 10}, "pd", [], state)
        assert got == PathChoice("pd-p", "pd", 99_990)


def test_naive_and_homogeneous_ignore_the_threshold() -> None:
    state = RouterState(T)
    assert NaivePolicy().choose(req(10), {}, "pd", ["remote"], state).path == "prfaas"
    assert HomogeneousPolicy().choose(req(10**6), {}, "pd", ["remote"], state).path == "pd-p"


def costs(wait_s: dict[str, float], pull_s_per_token: float = 1e-5) -> PathCosts:
    """PrfaaS twice as fast as PD per token; ``wait_s`` queued per instance."""
    prefill = {"remote": PrefillTimeModel(0.1, 1e-4), "pd": PrefillTimeModel(0.1, 2e-4)}
    return PathCosts(prefill, wait_s, pull_s_per_token)


def choose_costed(prompt_len: int, cached: dict[str, int], path_costs: PathCosts) -> PathChoice:
    state = RouterState(T, "abundant", path_costs)
    return PrfaasThreshold().choose(req(prompt_len), cached, "pd", ["remote"], state)


def test_abundant_pulls_to_the_slower_cluster_only_when_the_faster_is_queued() -> None:
    cached = {"pd": 0, "remote": 8000}
    # Idle: the remote cluster computes the same 1,000 tokens in 0.2 s against PD's 0.3 s
    # plus 0.08 s of pull: no pull, the scarce rule's answer.
    got = choose_costed(9000, cached, costs({"remote": 0.0, "pd": 0.0}))
    assert got == PathChoice("prfaas", "remote", 1000)
    # Remote queued for 1 s: 0.3 + 0.08 s at PD beats 1.2 s there.
    got = choose_costed(9000, cached, costs({"remote": 1.0, "pd": 0.0}))
    assert got == PathChoice("pd-p", "pd", 1000, pull_from="remote")
    # The same, with no headroom on the link: no pull.
    got = choose_costed(9000, cached, costs({"remote": 1.0, "pd": 0.0}, float("inf")))
    assert got == PathChoice("prfaas", "remote", 1000)


def test_abundant_pulls_a_prefix_when_carrying_it_beats_recomputing_it() -> None:
    cached = {"pd": 3000, "remote": 100}
    # Pulling 2,900 tokens (0.029 s) saves 0.29 s of remote prefill: pulled.
    got = choose_costed(5000, cached, costs({"remote": 0.0, "pd": 0.0}))
    assert got == PathChoice("prfaas", "remote", 2000, pull_from="pd")
    # At 1 ms per token the pull (2.9 s) costs more than recomputing: not pulled.
    got = choose_costed(5000, cached, costs({"remote": 0.0, "pd": 0.0}, 1e-3))
    assert got == PathChoice("prfaas", "remote", 4900)
