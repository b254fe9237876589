"""From the planner's inputs to a runnable setup: one deployment, one policy.

Instance counts, the PD split and the static threshold come from the planner's own
solution for the deployment (``planner.search.plan``), so a simulated run starts exactly
where the analytical model says to operate. Cluster names: ``prfaas`` and ``pd``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from prfaas.planner.build import PlanInputs
from prfaas.planner.deployments import (
    Deployment,
    HomogeneousPd,
    NaiveHeterogeneous,
    PlanResult,
    PrfaasPd,
)
from prfaas.planner.profile import PrefillProfile
from prfaas.planner.search import plan
from prfaas.router.control import ControlConfig, Controller
from prfaas.router.policies import HomogeneousPolicy, NaivePolicy, PrfaasThreshold
from prfaas.router.router import RouterConfig
from prfaas.router.types import RouterState
from prfaas.sim.curves import ScalarCurve
from prfaas.sim.estimates import ttft_choice
from prfaas.sim.instances import PrefillCost
from prfaas.sim.simulator import PolicySetup
from prfaas.sim.topology import FleetSpec, SimClusterSpec, SimLinkSpec

POLICIES = (
    "homogeneous",
    "naive",
    "prfaas-static",
    "prfaas-adaptive",
    "prfaas-cache-blind",
    "prfaas-ttft",  # prfaas-static's path rule, prefill instance by estimated TTFT
)
DEFAULT_POLICY = {
    "prfaas_pd": "prfaas-static",
    "homogeneous_pd": "homogeneous",
    "naive_heterogeneous": "naive",
}


@dataclass(frozen=True)
class FleetOptions:
    """Knobs the planner does not have; defaults resolved here, validated in config.py."""

    rtt_ms: float = 20.0
    local_link_gbps: float = 800.0
    block_tokens: int = 512
    cache_capacity_blocks: int = 0
    max_batch_tokens: int = 8192
    pipeline_layers: int = 32
    balance_factor: float = 1.25
    length_window: int = 2000
    link_schedule: tuple[tuple[float, float], ...] = ()
    control: ControlConfig = field(default_factory=ControlConfig)


@dataclass(frozen=True)
class RunSetup:
    fleet: FleetSpec
    policy: PolicySetup
    plan: PlanResult


def find_deployment(inputs: PlanInputs, name: str) -> Deployment:
    for d in inputs.deployments:
        if d.name == name:
            return d
    known = ", ".join(repr(d.name) for d in inputs.deployments)
    raise ValueError(f"unknown deployment {name!r} (known: {known})")


def build_setup(
    inputs: PlanInputs, deployment: Deployment, policy: str | None, options: FleetOptions
) -> RunSetup:
    policy = policy or DEFAULT_POLICY[deployment.kind]
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    if policy.startswith("prfaas") and not isinstance(deployment, PrfaasPd):
        raise ValueError(f"policy {policy} needs a prfaas_pd deployment, not {deployment.kind}")
    result = plan(deployment, inputs.workload, inputs.output_tokens, inputs.threshold_step_tokens)
    fleet = _fleet(deployment, result, options, max_tokens=int(inputs.workload.max_tokens))
    router_config = RouterConfig(
        block_tokens=options.block_tokens,
        balance_factor=options.balance_factor,
        length_window=options.length_window,
        cache_aware=policy != "prfaas-cache-blind",
    )
    setup: PolicySetup
    if policy == "homogeneous":
        setup = PolicySetup(policy, HomogeneousPolicy(), router_config, RouterState(math.inf))
    elif policy == "naive":
        setup = PolicySetup(policy, NaivePolicy(), router_config, RouterState(0.0))
    elif policy == "prfaas-adaptive":
        assert isinstance(deployment, PrfaasPd)
        controller = Controller(
            options.control, deployment, inputs.workload, inputs.output_tokens, "pd", "prfaas"
        )
        setup = PolicySetup(policy, PrfaasThreshold(), router_config, controller.state, controller)
    else:
        assert result.threshold_tokens is not None
        state = RouterState(result.threshold_tokens, "scarce")
        choice = None
        if policy == "prfaas-ttft":
            choice = ttft_choice(fleet, options.balance_factor, int(inputs.workload.max_tokens))
        setup = PolicySetup(policy, PrfaasThreshold(), router_config, state, None, choice)
    return RunSetup(fleet, setup, result)


def prefill_cost(profile: PrefillProfile, max_tokens: int) -> PrefillCost:
    kv: ScalarCurve | None = None
    try:
        profile.kv_bytes(np.array([1.0]))
        kv = ScalarCurve(profile.kv_bytes, max_tokens)
    except ValueError:
        kv = None
    return PrefillCost(ScalarCurve(profile.prefill_s, max_tokens), kv)


def _fleet(d: Deployment, r: PlanResult, o: FleetOptions, max_tokens: int) -> FleetSpec:
    local = SimLinkSpec("pd", "pd", o.local_link_gbps)
    clusters: list[SimClusterSpec] = []
    links = [local]
    if isinstance(d, PrfaasPd | NaiveHeterogeneous):
        cost = prefill_cost(d.prfaas_profile, max_tokens)
        clusters.append(SimClusterSpec("prfaas", "prfaas", d.prfaas_instances, 0, cost))
        for src, dst in (("prfaas", "pd"), ("pd", "prfaas")):
            links.append(SimLinkSpec(src, dst, d.bandwidth_gbps, o.rtt_ms, o.link_schedule))
    if isinstance(d, PrfaasPd | HomogeneousPd):
        assert r.n_p is not None
        cost = prefill_cost(d.pd_prefill_profile, max_tokens)
        clusters.append(SimClusterSpec("pd", "pd", r.n_p, r.n_d, cost, d.decode))
    else:
        clusters.append(SimClusterSpec("pd", "pd", 0, d.pd_instances, None, d.decode))
    return FleetSpec(
        tuple(clusters),
        tuple(links),
        block_tokens=o.block_tokens,
        cache_capacity_blocks=o.cache_capacity_blocks,
        max_batch_tokens=o.max_batch_tokens,
        pipeline_layers=o.pipeline_layers,
    )
