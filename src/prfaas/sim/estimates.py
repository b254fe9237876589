"""The router's TTFT estimate for a simulated fleet, from the same profiles the cost model uses.

Per cluster, T(l) = a + b·l + c·l² is least-squares fitted on the profile sampled up to
``max_tokens`` (``PrefillTimeModel.sampled``; the live system fits the same on its start-up
profile); the KV transfer term is the KV size's slope over the link to the decode cluster
at its configured capacity (what the router can know; the simulator's link may dip).
"""

from __future__ import annotations

from prfaas.router.instance_choice import ClusterCosts, EstimatedTtft
from prfaas.router.prefill_time import PrefillTimeModel
from prfaas.sim.topology import FleetSpec


def ttft_choice(fleet: FleetSpec, balance_factor: float, max_tokens: int = 131072) -> EstimatedTtft:
    decode_cluster = next((c.name for c in fleet.clusters if c.num_decode > 0), None)
    costs: dict[str, ClusterCosts] = {}
    for cluster in fleet.clusters:
        cost = cluster.prefill_cost
        if cost is None:
            continue
        model = PrefillTimeModel.sampled(cost.prefill_s, max_tokens)
        transfer_s_per_token = 0.0
        link = next(
            (s for s in fleet.links if s.src == cluster.name and s.dst == decode_cluster), None
        )
        if cost.kv_bytes is not None and link is not None and link.capacity_gbps > 0:
            slope_bytes = (cost.kv_bytes(max_tokens) - cost.kv_bytes(1)) / (max_tokens - 1)
            transfer_s_per_token = slope_bytes * 8 / (link.capacity_gbps * 1e9)
        costs[cluster.name] = ClusterCosts(model, transfer_s_per_token)
    return EstimatedTtft(costs, balance_factor)
