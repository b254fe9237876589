"""Exhaustive search over the threshold t and the N_p/N_d split (the paper's 2-D grid).

Every (N_p, t) on the grid is evaluated with eqs. 3-6; the best Λ_max wins, ties broken by
lower PrfaaS egress, then by fewer prefill instances, then by the lower threshold. The grid
for t runs from the workload's minimum to its maximum length in ``threshold_step_tokens``
steps. Eqs. 7-8 are not imposed; ``balance_checks`` reports how close the optimum comes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from prfaas.planner.deployments import (
    Deployment,
    HomogeneousPd,
    NaiveHeterogeneous,
    PlanResult,
    PrfaasPd,
    SearchCurves,
)
from prfaas.planner.throughput import (
    egress_gbps,
    lambda_max_rps,
    theta_decode_rps,
    theta_link_rps,
    theta_prefill_rps,
)
from prfaas.planner.workload import LengthDistribution

FloatArray = npt.NDArray[np.float64]


def threshold_grid(workload: LengthDistribution, step_tokens: float) -> FloatArray:
    if step_tokens <= 0:
        raise ValueError("threshold step must be > 0")
    grid = np.arange(workload.min_tokens, workload.max_tokens, step_tokens, dtype=np.float64)
    return np.append(grid, workload.max_tokens)


def plan(
    deployment: Deployment,
    workload: LengthDistribution,
    output_tokens: float,
    threshold_step_tokens: float = 50.0,
) -> PlanResult:
    if isinstance(deployment, PrfaasPd):
        return _plan_prfaas_pd(deployment, workload, output_tokens, threshold_step_tokens)
    if isinstance(deployment, HomogeneousPd):
        return _plan_homogeneous(deployment, workload, output_tokens)
    return _plan_naive(deployment, workload, output_tokens)


def _plan_prfaas_pd(
    d: PrfaasPd, workload: LengthDistribution, output_tokens: float, step_tokens: float
) -> PlanResult:
    thresholds = threshold_grid(workload, step_tokens)
    stats = workload.tail_stats(thresholds)
    p, l_long, l_short = stats.offload_fraction, stats.l_long_tokens, stats.l_short_tokens
    # Where a side gets no traffic its mean length is NaN; evaluate at a harmless length.
    safe_long = np.where(np.isnan(l_long), workload.max_tokens, l_long)
    safe_short = np.where(np.isnan(l_short), workload.min_tokens, l_short)
    compute = theta_prefill_rps(d.prfaas_instances, d.prfaas_profile, safe_long)  # (G,)
    link = theta_link_rps(d.bandwidth_gbps, d.prfaas_profile, safe_long)  # (G,)
    theta_prfaas = np.minimum(compute, link)
    n_p_values = np.arange(1, d.pd_instances)  # both PD roles keep >= 1 instance
    if len(n_p_values) == 0:
        raise ValueError(f"{d.name}: a PD cluster needs >= 2 instances to split")
    theta_pd_p = theta_prefill_rps(1.0, d.pd_prefill_profile, safe_short)[None, :]
    theta_pd_p = n_p_values[:, None] * theta_pd_p  # (S, G)
    theta_pd_d = np.array(
        [theta_decode_rps(float(d.pd_instances - n), d.decode, output_tokens) for n in n_p_values]
    )[:, None]  # (S, 1)
    lam = lambda_max_rps(theta_prfaas[None, :], theta_pd_p, theta_pd_d, p[None, :])
    kv_long = d.prfaas_profile.kv_bytes(safe_long)
    egress = lam * p[None, :] * kv_long[None, :] * 8 / 1e9
    split_grid = np.broadcast_to(n_p_values[:, None], lam.shape)
    threshold_mesh = np.broadcast_to(thresholds[None, :], lam.shape)
    # np.lexsort: last key is primary.
    order = np.lexsort((threshold_mesh.ravel(), split_grid.ravel(), egress.ravel(), -lam.ravel()))
    row, col = np.unravel_index(order[0], lam.shape)
    throughput = float(lam[row, col])
    p_best = float(p[col])
    terms = {
        "prfaas_prefill": compute[col] / p_best if p_best > 0 else np.inf,
        "link": link[col] / p_best if p_best > 0 else np.inf,
        "pd_prefill": theta_pd_p[row, col] / (1 - p_best) if p_best < 1 else np.inf,
        "pd_decode": float(theta_pd_d[row, 0]),
    }
    n_p = int(n_p_values[row])
    return PlanResult(
        deployment=d.name,
        kind=d.kind,
        threshold_tokens=float(thresholds[col]),
        n_prfaas=d.prfaas_instances,
        n_p=n_p,
        n_d=d.pd_instances - n_p,
        theta_prfaas_rps=float(theta_prfaas[col]),
        theta_pd_p_rps=float(theta_pd_p[row, col]),
        theta_pd_d_rps=float(theta_pd_d[row, 0]),
        throughput_rps=throughput,
        bottleneck=min(terms, key=lambda k: float(terms[k])),
        offload_fraction=p_best,
        l_long_tokens=None if np.isnan(l_long[col]) else float(l_long[col]),
        l_short_tokens=None if np.isnan(l_short[col]) else float(l_short[col]),
        egress_gbps=egress_gbps(throughput, p_best, float(kv_long[col])),
        link_gbps=d.bandwidth_gbps,
        curves=SearchCurves(tuple(int(n) for n in n_p_values), thresholds, lam),
    )


def _plan_homogeneous(
    d: HomogeneousPd, workload: LengthDistribution, output_tokens: float
) -> PlanResult:
    mean = np.array([workload.mean_tokens])
    per_instance = float(theta_prefill_rps(1.0, d.pd_prefill_profile, mean)[0])
    n_p_values = np.arange(1, d.pd_instances)
    if len(n_p_values) == 0:
        raise ValueError(f"{d.name}: a PD cluster needs >= 2 instances to split")
    theta_pd_p = n_p_values * per_instance
    theta_pd_d = np.array(
        [theta_decode_rps(float(d.pd_instances - n), d.decode, output_tokens) for n in n_p_values]
    )
    lam = np.minimum(theta_pd_p, theta_pd_d)
    best = int(np.flatnonzero(lam == lam.max())[0])  # ties: fewer prefill instances
    n_p = int(n_p_values[best])
    return PlanResult(
        deployment=d.name,
        kind=d.kind,
        threshold_tokens=None,
        n_prfaas=None,
        n_p=n_p,
        n_d=d.pd_instances - n_p,
        theta_prfaas_rps=None,
        theta_pd_p_rps=float(theta_pd_p[best]),
        theta_pd_d_rps=float(theta_pd_d[best]),
        throughput_rps=float(lam[best]),
        bottleneck="pd_prefill" if theta_pd_p[best] <= theta_pd_d[best] else "pd_decode",
        offload_fraction=0.0,
        l_long_tokens=None,
        l_short_tokens=workload.mean_tokens,
        egress_gbps=0.0,
        link_gbps=None,
        curves=SearchCurves(
            tuple(int(n) for n in n_p_values), np.array([np.nan]), lam[:, None].copy()
        ),
    )


def _plan_naive(
    d: NaiveHeterogeneous, workload: LengthDistribution, output_tokens: float
) -> PlanResult:
    mean = np.array([workload.mean_tokens])
    compute = float(theta_prefill_rps(d.prfaas_instances, d.prfaas_profile, mean)[0])
    link = float(theta_link_rps(d.bandwidth_gbps, d.prfaas_profile, mean)[0])
    theta_pd_d = theta_decode_rps(d.pd_instances, d.decode, output_tokens)
    terms = {"prfaas_prefill": compute, "link": link, "pd_decode": theta_pd_d}
    throughput = min(terms.values())
    kv_mean = float(d.prfaas_profile.kv_bytes(mean)[0])
    return PlanResult(
        deployment=d.name,
        kind=d.kind,
        threshold_tokens=None,
        n_prfaas=d.prfaas_instances,
        n_p=None,
        n_d=d.pd_instances,
        theta_prfaas_rps=min(compute, link),
        theta_pd_p_rps=None,
        theta_pd_d_rps=theta_pd_d,
        throughput_rps=throughput,
        bottleneck=min(terms, key=lambda k: terms[k]),
        offload_fraction=1.0,
        l_long_tokens=workload.mean_tokens,
        l_short_tokens=None,
        egress_gbps=egress_gbps(throughput, 1.0, kv_mean),
        link_gbps=d.bandwidth_gbps,
    )


def balance_checks(result: PlanResult) -> tuple[float, float] | None:
    """Relative gaps of eq. 7 (Θ_prfaas/p vs Θ_pd-p/(1-p)) and eq. 8 (Θ_prfaas + Θ_pd-p vs
    Θ_pd-d) at a PrfaaS-PD optimum; both 0 at the continuous optimum the paper describes."""
    if result.kind != "prfaas_pd" or result.theta_prfaas_rps is None:
        return None
    assert result.theta_pd_p_rps is not None
    p = result.offload_fraction
    if not 0 < p < 1:
        return None
    left, right = result.theta_prfaas_rps / p, result.theta_pd_p_rps / (1 - p)
    eq7 = abs(left - right) / max(left, right)
    prefill_total = result.theta_prfaas_rps + result.theta_pd_p_rps
    eq8 = (prefill_total - result.theta_pd_d_rps) / result.theta_pd_d_rps
    return eq7, eq8


def best_threshold_for_split(result: PlanResult, n_p: int) -> tuple[float, float]:
    """(t, Λ_max) of the best threshold with the PD split held at ``n_p`` prefill instances.

    For a control loop that moves t quickly while the split changes only slowly: it reads
    the curves of an already-solved PrfaaS-PD plan, so it costs no new search.
    """
    if result.kind != "prfaas_pd" or result.curves is None:
        raise ValueError("best_threshold_for_split needs a PrfaaS-PD plan with curves")
    curves = result.curves
    if n_p not in curves.n_p_values:
        raise ValueError(f"n_p {n_p} not in the searched splits {curves.n_p_values}")
    row = curves.throughput_rps[curves.n_p_values.index(n_p)]
    col = int(np.flatnonzero(row == row.max())[0])  # ties: the lower threshold
    return float(curves.thresholds_tokens[col]), float(row[col])
