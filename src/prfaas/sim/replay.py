"""A live run replayed in the simulator: the same deployment, requests, link schedule and
``Controller``, so that the two t trajectories can be compared (``benchmarks/link_dip.py``).

What the replay takes from the live run: the deployment as start-up profiling measured it
(``PrfaasPd``: the fitted prefill profiles, KV sizes, the decode step, the link cap), the
deployed split, the controller's configuration and where it stood when traffic began
(``OperatingPoint``), the router's instance choice, each request's arrival (seconds from the
run's start), prompt tokens and output tokens, and the times the link's rate changed.
The simulated instances run the profile (one prefill batch at a time, FCFS under the token
budget); the simulated link is the water-filled pipe of ``link.py`` measured by the same
``CapacityEstimator`` the live sender feeds.

What it cannot replay: the live engine's scheduling beyond the profile, the transport's
framing and acknowledgements, a hand-off the decode side refuses (live, that prefill is
redone locally), and CPU contention between the processes of a one-host deployment.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Sequence
from dataclasses import dataclass

from prfaas.planner.deployments import PrfaasPd
from prfaas.router.control import Controller
from prfaas.router.instance_choice import InstanceChoice
from prfaas.router.policies import PrfaasThreshold
from prfaas.router.router import RouterConfig
from prfaas.sim.build import prefill_cost
from prfaas.sim.request import SimRequest
from prfaas.sim.simulator import PolicySetup, RunConfig, Simulator
from prfaas.sim.topology import FleetSpec, SimClusterSpec, SimLinkSpec

LOCAL_LINK_GBPS = 800.0  # a PD cluster's own hand-off: never the bottleneck


@dataclass(frozen=True)
class RecordedRequest:
    arrival_s: float  # from the run's start
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class ControlSample:
    """One short tick: the controller's (smoothed) link capacity and the t it applied."""

    time_s: float
    capacity_gbps: float
    threshold_tokens: float


@dataclass(frozen=True)
class LiveScenario:
    deployment: PrfaasPd  # as profiled; the link at its configured cap
    n_p: int  # deployed PD prefill instances (the rest of the PD cluster decodes)
    controller: Controller  # the live one as traffic began (copied: the replay drives a copy)
    requests: tuple[RecordedRequest, ...]
    link_schedule: tuple[tuple[float, float], ...]  # (at_s, gbps) of the PrfaaS -> PD link
    block_tokens: int
    max_batch_tokens: int
    pipeline_layers: int
    balance_factor: float
    instance_choice: InstanceChoice | None = None
    rtt_ms: float = 0.0


def replay(scenario: LiveScenario, duration_s: float) -> list[ControlSample]:
    """Run the scenario for ``duration_s`` simulated seconds; the controller's short ticks."""
    s, d = scenario, scenario.deployment
    controller = copy.deepcopy(s.controller)
    pd, prfaas = controller.pd_cluster, controller.prfaas_cluster
    max_tokens = max([r.prompt_tokens for r in s.requests] + [1])
    pd_cost = prefill_cost(d.pd_prefill_profile, max_tokens)
    prfaas_cost = prefill_cost(d.prfaas_profile, max_tokens)
    fleet = FleetSpec(
        (
            SimClusterSpec(prfaas, "prfaas", d.prfaas_instances, 0, prfaas_cost),
            SimClusterSpec(pd, "pd", s.n_p, d.pd_instances - s.n_p, pd_cost, d.decode),
        ),
        (
            SimLinkSpec(prfaas, pd, d.bandwidth_gbps, s.rtt_ms, s.link_schedule),
            SimLinkSpec(pd, prfaas, d.bandwidth_gbps, s.rtt_ms),
            SimLinkSpec(pd, pd, LOCAL_LINK_GBPS),
        ),
        block_tokens=s.block_tokens,
        max_batch_tokens=s.max_batch_tokens,
        pipeline_layers=s.pipeline_layers,
    )
    policy = PolicySetup(
        "replay",
        PrfaasThreshold(),
        RouterConfig(block_tokens=s.block_tokens, balance_factor=s.balance_factor),
        controller.state,
        controller,
        s.instance_choice,
    )
    ordered = sorted(s.requests, key=lambda r: r.arrival_s)
    requests = [
        SimRequest(f"req-{k}", r.arrival_s, r.prompt_tokens, r.output_tokens)
        for k, r in enumerate(ordered)
    ]
    sim = Simulator(fleet, policy, requests, RunConfig(duration_s, drain_limit_s=0.0))
    sim.run()
    return [
        ControlSample(time_s, link.capacity_gbps, state.threshold_tokens)
        for time_s, link, state in sim.control_trace
    ]


@dataclass(frozen=True)
class Agreement:
    """How far the simulated t is from the live one, at each live sample: the relative
    difference |t_sim - t_live| / t_live, with t_sim the simulated controller's t at the
    sample's time (its last tick before it). Live samples are evenly spaced, so the mean is
    the time-weighted mean over the run."""

    mean_relative: float
    max_relative: float
    within_20_percent: float  # share of the samples
    samples: int


def compare(live: Sequence[ControlSample], simulated: Sequence[ControlSample]) -> Agreement:
    """``live`` and ``simulated`` share a clock (seconds from the run's start); live samples
    before the first simulated tick are left out (both controllers still hold the start t)."""
    ticks = [s.time_s for s in simulated]
    diffs = []
    for sample in live:
        k = bisect.bisect_right(ticks, sample.time_s) - 1
        if k < 0:
            continue
        t_sim = simulated[k].threshold_tokens
        diffs.append(abs(t_sim - sample.threshold_tokens) / sample.threshold_tokens)
    if not diffs:
        raise ValueError("no live sample falls after the first simulated tick")
    return Agreement(
        sum(diffs) / len(diffs),
        max(diffs),
        sum(d <= 0.2 for d in diffs) / len(diffs),
        len(diffs),
    )
