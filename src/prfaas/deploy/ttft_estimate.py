"""The live router's instance choice: ``router.instance_choice.EstimatedTtft`` on the
deployment's own profile.

Before start-up profiling (or where it does not run: a pinned t, a failed profile), every
cluster gets ``PLACEHOLDER``, a linear T(l): the choice then balances queued tokens and
weighs a cached prefix by the tokens it saves, which needs no absolute timing. Once the
prefill instances are profiled, T(l) = a + b·l + c·l² is fitted per cluster on the measured
points (``MeasuredPrefill.prefill_model``, the fit the planner profile uses), and the PrfaaS
cluster's KV transfer term is the measured KV bytes per token over the link's cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prfaas.deploy.profiling import MeasuredPrefill
from prfaas.router.instance_choice import ClusterCosts, EstimatedTtft
from prfaas.router.prefill_time import PrefillTimeModel

# 5 ms per call + 0.1 ms per token: the shape of a small model's prefill on a CPU core.
PLACEHOLDER = PrefillTimeModel(a_s=0.005, b_s_per_token=1e-4)


def placeholder_choice(clusters: Iterable[str], balance_factor: float) -> EstimatedTtft:
    return EstimatedTtft({c: ClusterCosts(PLACEHOLDER) for c in clusters}, balance_factor)


def measured_choice(
    measured: Iterable[MeasuredPrefill],
    link_gbps: Mapping[str, float],
    balance_factor: float,
    base: EstimatedTtft | None = None,
) -> EstimatedTtft:
    """``base``'s costs with each measured cluster's replaced; ``link_gbps``: the cap of the
    link from a cluster to the decode instances (absent: a local link, no transfer term)."""
    costs = dict(base.costs) if base is not None else {}
    for m in measured:
        transfer_s_per_token = 0.0
        gbps = link_gbps.get(m.cluster)
        if gbps and len(m.num_tokens) >= 2 and m.num_tokens[-1] > m.num_tokens[0]:
            per_token = (m.kv_bytes[-1] - m.kv_bytes[0]) / (m.num_tokens[-1] - m.num_tokens[0])
            transfer_s_per_token = max(per_token, 0.0) * 8 / (gbps * 1e9)
        costs[m.cluster] = ClusterCosts(m.prefill_model(), transfer_s_per_token)
    return EstimatedTtft(costs, balance_factor)
