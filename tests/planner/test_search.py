"""The exhaustive search against a scalar brute force of eqs. 3-6, and the eq. 7-8 checks."""

import math

import numpy as np
import pytest

from prfaas.planner.deployments import HomogeneousPd, NaiveHeterogeneous, PrfaasPd
from prfaas.planner.profile import TableProfile
from prfaas.planner.search import balance_checks, plan, threshold_grid
from prfaas.planner.throughput import DecodeSpec
from prfaas.planner.workload import EmpiricalLengths, TruncatedLogNormal

FAST = TableProfile((1000.0, 20000.0, 60000.0), (0.2, 1.5, 6.0), (1e8, 5e8, 13e8), degree=2)
SLOW = TableProfile((1000.0, 20000.0, 60000.0), (0.5, 4.0, 15.0), (1e8, 5e8, 13e8), degree=2)
DECODE = DecodeSpec(max_batch_size=16, step_s=0.02)


def brute_force(
    d: PrfaasPd, workload: EmpiricalLengths | TruncatedLogNormal, out: float, step: float
) -> tuple[float, int, float]:
    """Λ_max, N_p, t by scalar loops over the same grid and the same tie-break."""
    best: tuple[float, float, int, float] | None = None
    for t in threshold_grid(workload, step):
        stats = workload.tail_stats(np.array([t]))
        p = float(stats.offload_fraction[0])
        l_long, l_short = float(stats.l_long_tokens[0]), float(stats.l_short_tokens[0])
        for n_p in range(1, d.pd_instances):
            bounds = [(d.pd_instances - n_p) * DECODE.tokens_per_s / out]
            egress = 0.0
            if p > 0:
                t_long = float(d.prfaas_profile.prefill_s(np.array([l_long]))[0])
                kv_long = float(d.prfaas_profile.kv_bytes(np.array([l_long]))[0])
                theta = min(d.prfaas_instances / t_long, d.bandwidth_gbps * 1e9 / 8 / kv_long)
                bounds.append(theta / p)
            if p < 1:
                t_short = float(d.pd_prefill_profile.prefill_s(np.array([l_short]))[0])
                bounds.append(n_p / t_short / (1 - p))
            lam = min(bounds)
            if p > 0:
                egress = lam * p * kv_long
            key = (lam, -egress, -n_p, -t)
            if best is None or key > (best[0], -best[1], -best[2], -best[3]):
                best = (lam, egress, n_p, float(t))
    assert best is not None
    return best[0], best[2], best[3]


@pytest.mark.parametrize("bandwidth_gbps", [100.0, 2.0])
@pytest.mark.parametrize("pd_instances", [2, 5])
def test_search_matches_brute_force_on_small_grids(
    bandwidth_gbps: float, pd_instances: int
) -> None:
    rng = np.random.default_rng(pd_instances)
    sample = np.exp(rng.normal(9.0, 1.0, size=300)).clip(100, 60000).astype(int)
    workload = EmpiricalLengths(tuple(int(x) for x in sample))
    d = PrfaasPd("x", 2, FAST, pd_instances, SLOW, DECODE, bandwidth_gbps)
    result = plan(d, workload, output_tokens=500, threshold_step_tokens=1000)
    lam, n_p, t = brute_force(d, workload, 500, 1000)
    assert result.throughput_rps == pytest.approx(lam, rel=1e-12)
    assert (result.n_p, result.threshold_tokens) == (n_p, t)
    assert result.n_p is not None and result.n_p + result.n_d == pd_instances


def test_narrow_link_binds_and_egress_stays_within_it() -> None:
    workload = TruncatedLogNormal(9.9, 1.0, 128, 131072)
    d = PrfaasPd("x", 4, FAST, 8, SLOW, DECODE, bandwidth_gbps=1.0)
    result = plan(d, workload, 1024, 200)
    assert result.egress_gbps <= 1.0 + 1e-9
    wide = plan(PrfaasPd("x", 4, FAST, 8, SLOW, DECODE, 1000.0), workload, 1024, 200)
    assert wide.throughput_rps >= result.throughput_rps
    assert wide.threshold_tokens is not None and result.threshold_tokens is not None
    assert result.threshold_tokens >= wide.threshold_tokens  # a scarce link exports less


def test_optimum_balances_eq7_when_decode_is_plentiful() -> None:
    workload = TruncatedLogNormal(9.9, 1.0, 128, 131072)
    d = PrfaasPd("x", 4, FAST, 8, SLOW, DecodeSpec(1000, 0.01), 1000.0)
    result = plan(d, workload, 1024, 10)
    checks = balance_checks(result)
    assert checks is not None
    assert checks[0] < 0.01  # Θ_prfaas/p = Θ_pd-p/(1-p) up to the grid step
    assert result.bottleneck in ("prfaas_prefill", "pd_prefill")


def test_homogeneous_split_matches_brute_force() -> None:
    workload = TruncatedLogNormal(9.0, 0.8, 128, 65536)
    d = HomogeneousPd("h", 7, SLOW, DECODE)
    result = plan(d, workload, 800)
    per_instance = 1 / float(SLOW.prefill_s(np.array([workload.mean_tokens]))[0])
    options = [
        (min(n * per_instance, (7 - n) * DECODE.tokens_per_s / 800), -n) for n in range(1, 7)
    ]
    lam, neg_n = max(options)
    assert result.throughput_rps == pytest.approx(lam)
    assert result.n_p == -neg_n and result.n_d == 7 + neg_n
    assert result.offload_fraction == 0 and result.egress_gbps == 0


def test_naive_heterogeneous_is_min_of_prefill_link_decode() -> None:
    workload = TruncatedLogNormal(9.0, 0.8, 128, 65536)
    mean = np.array([workload.mean_tokens])
    d = NaiveHeterogeneous("n", 3, FAST, 4, DECODE, 100.0)
    result = plan(d, workload, 800)
    expected = min(
        3 / float(FAST.prefill_s(mean)[0]),
        100e9 / 8 / float(FAST.kv_bytes(mean)[0]),
        4 * DECODE.tokens_per_s / 800,
    )
    assert result.throughput_rps == pytest.approx(expected)
    assert result.offload_fraction == 1.0 and result.threshold_tokens is None
    assert math.isclose(result.egress_gbps, expected * float(FAST.kv_bytes(mean)[0]) * 8 / 1e9)


def test_pd_cluster_of_one_cannot_split() -> None:
    workload = TruncatedLogNormal(9.0, 0.8, 128, 65536)
    with pytest.raises(ValueError, match=">= 2"):
        plan(HomogeneousPd("h", 1, SLOW, DECODE), workload, 800)
