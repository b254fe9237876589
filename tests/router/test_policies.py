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


def test_abundant_pulls_into_a_much_slower_pd_p_never_into_an_equal_one_by_estimate() -> None:
    cached = {"pd": 0, "remote": 8000}
    # Remote queued for 1 s: 0.3 + 0.08 s at PD would beat 1.2 s there for this request,
    # but at the prompt's 9,000 tokens PD-P is 1.9 times slower (> SLOWER_RATIO): the pulled
    # prefix would keep its later requests on the slower side. No pull.
    got = choose_costed(9000, cached, costs({"remote": 1.0, "pd": 0.0}))
    assert got == PathChoice("prfaas", "remote", 1000)
    # Without the control loop's costs the paper's rule still pulls it.
    assert choose(9000, cached, mode="abundant") == PathChoice(
        "pd-p", "pd", 1000, pull_from="remote"
    )
    # Equally fast clusters: the estimate decides. Queued remote: pulled; idle: not.
    same = {"remote": PrefillTimeModel(0.1, 1e-4), "pd": PrefillTimeModel(0.1, 1e-4)}
    got = choose_costed(9000, cached, PathCosts(same, {"remote": 1.0, "pd": 0.0}, 1e-5))
    assert got == PathChoice("pd-p", "pd", 1000, pull_from="remote")
    got = choose_costed(9000, cached, PathCosts(same, {"remote": 0.0, "pd": 0.0}, 1e-5))
    assert got == PathChoice("prfaas", "remote", 1000)


def test_abundant_pulls_into_prfaas_under_t_when_that_finishes_first() -> None:
    # 1,800 of 2,500 tokens cached in PD: the 700-token remainder is under t, so the scarce
    # rule computes it on PD-P (0.1 + 0.14 s). Pulling the 1,800 tokens (0.018 s) and
    # computing 700 on PrfaaS (0.1 + 0.07 s) finishes first: taken.
    cached = {"pd": 1800, "remote": 0}
    got = choose_costed(2500, cached, costs({"remote": 0.0, "pd": 0.0}))
    assert got == PathChoice("prfaas", "remote", 700, pull_from="pd")
    # PrfaaS queued for 1 s: the scarce rule's PD-P answer.
    got = choose_costed(2500, cached, costs({"remote": 1.0, "pd": 0.0}))
    assert got == PathChoice("pd-p", "pd", 700)


def test_abundant_pulls_a_prefix_when_carrying_it_beats_recomputing_it() -> None:
    cached = {"pd": 3000, "remote": 100}
    # Pulling 2,900 tokens (0.029 s) saves 0.29 s of remote prefill: pulled.
    got = choose_costed(5000, cached, costs({"remote": 0.0, "pd": 0.0}))
    assert got == PathChoice("prfaas", "remote", 2000, pull_from="pd")
    # At 1 ms per token the pull (2.9 s) costs more than recomputing: not pulled.
    got = choose_costed(5000, cached, costs({"remote": 0.0, "pd": 0.0}, 1e-3))
    assert got == PathChoice("prfaas", "remote", 4900)
