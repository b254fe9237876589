"""Glue between the config files and a run: workloads, options, one run, the max-rate search.

``SimContext`` holds the planner's inputs, built once per config file. For a trace scenario
the planner re-solves on the trace itself (its incremental lengths under an LRU model of
the per-instance cache size), so t and the split fit the traffic being replayed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prfaas.planner.build import PlanInputs, build_inputs
from prfaas.planner.config import PlanConfig, TraceSection, WorkloadSection, load_plan_config
from prfaas.planner.trace import TraceRequest, incremental_lengths, load_mooncake_trace
from prfaas.planner.workload import EmpiricalLengths
from prfaas.router.control import ControlConfig
from prfaas.sim.build import FleetOptions, RunSetup, build_setup, find_deployment
from prfaas.sim.config import ConversationSection, ScenarioSection, SimConfigError, SimSettings
from prfaas.sim.conversation import ConversationWorkload
from prfaas.sim.metrics import RunResult
from prfaas.sim.request import SimRequest
from prfaas.sim.simulator import RunConfig, Simulator
from prfaas.sim.workload import Burst, Drift, SyntheticWorkload, TraceWorkload

SLO_TARGET = 0.9  # --find-max-rate: attainment needed overall and in the last quarter


@dataclass(frozen=True)
class SimContext:
    plan_path: Path
    plan_config: PlanConfig
    inputs: PlanInputs

    @classmethod
    def load(cls, plan_path: Path) -> SimContext:
        config = load_plan_config(plan_path)
        return cls(plan_path, config, build_inputs(config, plan_path.parent))

    def for_trace(self, trace_path: Path, settings: SimSettings) -> SimContext:
        capacity = settings.cache_capacity_blocks or None
        if capacity is None:
            section = TraceSection(str(trace_path), "none", settings.block_tokens)
        else:
            section = TraceSection(str(trace_path), "lru", settings.block_tokens, capacity)
        config = dataclasses.replace(self.plan_config, workload=WorkloadSection(trace=section))
        return SimContext(self.plan_path, config, build_inputs(config, self.plan_path.parent))

    def for_requests(self, requests: Sequence[SimRequest], settings: SimSettings) -> SimContext:
        """As ``for_trace``, for a generated workload (a conversation): the planner re-solves
        on its incremental lengths under the same cache model and on its mean output."""
        trace = [
            TraceRequest(r.arrival_s * 1000.0, r.prompt_len, r.output_len, r.hash_ids)
            for r in requests
        ]
        if not trace:
            raise SimConfigError("the workload generated no requests")
        capacity = settings.cache_capacity_blocks or None
        model = "lru" if capacity is not None else "none"
        lengths = incremental_lengths(trace, model, settings.block_tokens, capacity)
        output_tokens = sum(r.output_length for r in trace) / len(trace)
        inputs = dataclasses.replace(
            self.inputs, workload=EmpiricalLengths(tuple(lengths)), output_tokens=output_tokens
        )
        return SimContext(self.plan_path, self.plan_config, inputs)


def fleet_options(s: SimSettings, scenario: ScenarioSection | None) -> FleetOptions:
    schedule = tuple((step.at_s, step.gbps) for step in scenario.link_schedule) if scenario else ()
    control = ControlConfig(**dataclasses.asdict(s.control))  # the rest: its defaults
    return FleetOptions(
        rtt_ms=s.rtt_ms,
        local_link_gbps=s.local_link_gbps,
        block_tokens=s.block_tokens,
        cache_capacity_blocks=s.cache_capacity_blocks,
        max_batch_tokens=s.max_batch_tokens,
        pipeline_layers=s.pipeline_layers,
        balance_factor=s.balance_factor,
        length_window=s.length_window,
        link_schedule=schedule,
        control=control,
    )


def run_config(s: SimSettings, warmup_s: float | None = None) -> RunConfig:
    return RunConfig(
        duration_s=s.duration_s,
        warmup_s=s.warmup_s if warmup_s is None else warmup_s,
        drain_limit_s=s.drain_limit_s,
        ttft_slo_s=s.ttft_slo_s,
        tpot_slo_s=s.tpot_slo_s,
        sample_interval_s=s.sample_interval_s,
        role_switch_drain_s=s.role_switch_drain_s,
    )


def workload(
    ctx: SimContext, s: SimSettings, scenario: ScenarioSection | None, rate_rps: float | None
) -> Iterable[SimRequest]:
    if scenario is not None and scenario.trace is not None:
        path = (ctx.plan_path.parent / scenario.trace.path).resolve()
        return TraceWorkload(load_mooncake_trace(path), scenario.trace.speedup, s.duration_s)
    if scenario is not None and scenario.conversation is not None:
        return conversation_workload(scenario.conversation, s)
    ln = ctx.plan_config.workload.lognormal
    if ln is None:
        raise SimConfigError("synthetic traffic needs a lognormal workload in the plan config")
    if rate_rps is None:
        raise SimConfigError("give --rate (or rate_rps in the scenario)")
    bursts = tuple(Burst(b.start_s, b.end_s, b.factor) for b in scenario.bursts) if scenario else ()
    d = scenario.drift if scenario else None
    drift = Drift(d.start_s, d.end_s, d.mu_to) if d else None
    out = round(ctx.inputs.output_tokens)
    return SyntheticWorkload(
        rate_rps,
        s.duration_s,
        ln.mu,
        ln.sigma,
        ln.min_tokens,
        ln.max_tokens,
        out,
        bursts,
        drift,
        s.seed,
    )


def conversation_workload(c: ConversationSection, s: SimSettings) -> ConversationWorkload:
    fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
    return ConversationWorkload(
        duration_s=s.duration_s, block_tokens=s.block_tokens, seed=s.seed, **fields
    )


def setup_for(
    ctx: SimContext, deployment: str, policy: str | None, s: SimSettings, sc: ScenarioSection | None
) -> RunSetup:
    return build_setup(
        ctx.inputs, find_deployment(ctx.inputs, deployment), policy, fleet_options(s, sc)
    )


def run_one(
    ctx: SimContext,
    deployment: str,
    policy: str | None,
    rate_rps: float | None,
    s: SimSettings,
    scenario: ScenarioSection | None = None,
    on_progress: Callable[[float], None] | None = None,
    warmup_s: float | None = None,
) -> RunResult:
    setup = setup_for(ctx, deployment, policy, s, scenario)
    traffic = workload(ctx, s, scenario, rate_rps)
    config = run_config(s, warmup_s)
    return Simulator(setup.fleet, setup.policy, traffic, config, on_progress).run()


def meets_slo(result: RunResult, ttft_slo_s: float, tpot_slo_s: float) -> bool:
    """SLO attainment >= 90% over the window and over its last quarter (a queue that
    grows without bound fails the second even while the average still looks fine)."""
    reqs = result.requests
    if not reqs:
        return False
    tail = reqs[len(reqs) * 3 // 4 :]

    def attained(rs: list[SimRequest]) -> float:
        ok = sum(
            1
            for r in rs
            if r.ttft_s is not None and r.ttft_s <= ttft_slo_s and r.tpot_s <= tpot_slo_s + 1e-12
        )
        return ok / len(rs)

    return attained(reqs) >= SLO_TARGET and attained(tail) >= SLO_TARGET


def find_max_rate(
    run_at: Callable[[float], RunResult],
    ok: Callable[[RunResult], bool],
    hi_rps: float,
    tolerance_rps: float = 0.01,
) -> tuple[float, RunResult | None]:
    """Bisection for the highest rate that passes ``ok`` (assumed monotone in the rate)."""
    lo, best = 0.0, None
    while hi_rps - lo > tolerance_rps:
        mid = (lo + hi_rps) / 2
        result = run_at(mid)
        if ok(result):
            lo, best = mid, result
        else:
            hi_rps = mid
    return lo, best
