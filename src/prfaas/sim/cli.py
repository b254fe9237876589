"""`prfaas simulate`: run a deployment under a policy, a scenario, or search the max rate."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prfaas.cli import Commands
    from prfaas.sim.config import ScenarioSection, SimSettings
    from prfaas.sim.metrics import RunResult
    from prfaas.sim.runner import SimContext


def register(commands: Commands) -> None:
    p = commands.top.add_parser(
        "simulate",
        help="discrete-event simulation of a deployment under a routing policy",
        description="Simulate a deployment from a planner config (or a scenarios file) with "
        "the real router policies over simulated instances, links and traffic.",
    )
    p.add_argument("--config", required=True, help="scenarios YAML or planner YAML")
    p.add_argument("--deployment", help="deployment name as `prfaas plan` prints it")
    p.add_argument(
        "--policy",
        help="homogeneous | naive | prfaas-static | prfaas-adaptive | prfaas-cache-blind | "
        "prfaas-ttft "
        "(default: the deployment's own, or every policy of the scenario)",
    )
    p.add_argument("--rate", type=float, help="arrival rate, requests/s")
    p.add_argument("--duration", type=float, help="simulated seconds of arrivals")
    p.add_argument("--scenario", help="a scenario of the scenarios file")
    p.add_argument("--warmup", type=float, help="simulated seconds before measuring")
    p.add_argument("--seed", type=int)
    p.add_argument("--ttft-slo", type=float, help="TTFT bound (s) for SLO attainment")
    p.add_argument(
        "--find-max-rate",
        action="store_true",
        help="bisect the highest rate whose queues stay bounded and SLO attainment >= 90%%",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--plot", metavar="DIR", help="write PNGs here")
    p.set_defaults(handler=run_simulate)


def _fail(message: str) -> int:
    print(f"prfaas: error: {message}", file=sys.stderr)
    return 2


def run_simulate(args: argparse.Namespace) -> int:
    from prfaas.planner.config import PlanConfigError
    from prfaas.planner.trace import TraceFormatError
    from prfaas.sim.config import SimConfigError, load_sim_config, settings
    from prfaas.sim.runner import SimContext

    try:
        loaded = load_sim_config(args.config)
        ctx = SimContext.load(loaded.plan_path)
        scenario = None
        if args.scenario is not None:
            if args.scenario not in loaded.scenarios:
                known = ", ".join(loaded.scenarios) or "none"
                raise SimConfigError(f"unknown scenario {args.scenario!r} (known: {known})")
            scenario = loaded.scenarios[args.scenario]
        overrides = {
            k: v
            for k, v in (
                ("duration_s", args.duration),
                ("warmup_s", args.warmup),
                ("seed", args.seed),
                ("ttft_slo_s", args.ttft_slo),
            )
            if v is not None
        }
        scenario_settings = {**(scenario.settings if scenario else {}), **overrides}
        s = settings(loaded.defaults, scenario_settings, str(args.config))
        if scenario is not None and scenario.trace is not None:
            trace_path = (loaded.plan_path.parent / scenario.trace.path).resolve()
            if not trace_path.exists():
                raise SimConfigError(f"trace not found: {trace_path}")
            ctx = ctx.for_trace(trace_path, s)
        if scenario is not None and scenario.conversation is not None:
            from prfaas.sim.runner import conversation_workload

            ctx = ctx.for_requests(list(conversation_workload(scenario.conversation, s)), s)
        deployment = args.deployment or (scenario.deployment if scenario else None)
        deployment = deployment or ctx.inputs.deployments[0].name
        rate = args.rate if args.rate is not None else (scenario.rate_rps if scenario else None)
        if args.find_max_rate:
            return _max_rate(args, ctx, s, scenario, deployment)
        if scenario is not None and args.policy is None:
            return _scenario(args, ctx, s, scenario, deployment, rate)
        return _single(args, ctx, s, scenario, deployment, rate)
    except (PlanConfigError, SimConfigError, TraceFormatError, ValueError, OSError) as exc:
        return _fail(str(exc))


def _single(
    args: argparse.Namespace,
    ctx: SimContext,
    s: SimSettings,
    scenario: ScenarioSection | None,
    dep: str,
    rate: float | None,
) -> int:
    from prfaas.sim.progress import progress_bar
    from prfaas.sim.runner import run_one

    with progress_bar(not args.json and sys.stderr.isatty()) as start:
        result = run_one(ctx, dep, args.policy, rate, s, scenario, start(dep, s.duration_s))
    summary = {"deployment": dep, "rate_rps": rate, **result.summary}
    _emit(args, summary)
    _plots(args, {result.summary["policy"]: result}, args.scenario or "run")
    return 0


def _scenario(
    args: argparse.Namespace,
    ctx: SimContext,
    s: SimSettings,
    scenario: ScenarioSection,
    dep: str,
    rate: float | None,
) -> int:
    from prfaas.sim.progress import progress_bar
    from prfaas.sim.scenarios import run_scenario

    with progress_bar(not args.json and sys.stderr.isatty()) as start:
        report = run_scenario(
            ctx, args.scenario, scenario, s, dep, list(scenario.policies), rate, start
        )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(f"{args.scenario}: {scenario.description.strip()}")
        for policy, figures in report.figures.items():
            cells = ", ".join(f"{k} {_fmt(v)}" for k, v in figures.items())
            print(f"  {policy:>20}: {cells}")
        if report.goal:
            print(f"  goal: {report.goal}: {'met' if report.met else 'NOT met'}")
    _plots(args, report.runs, args.scenario)
    return 0


def _max_rate(
    args: argparse.Namespace,
    ctx: SimContext,
    s: SimSettings,
    scenario: ScenarioSection | None,
    dep: str,
) -> int:
    from prfaas.planner.search import plan
    from prfaas.sim.build import find_deployment
    from prfaas.sim.runner import find_max_rate, meets_slo, run_one

    d = find_deployment(ctx.inputs, dep)
    planned = plan(
        d, ctx.inputs.workload, ctx.inputs.output_tokens, ctx.inputs.threshold_step_tokens
    )
    warmup = scenario.measure_from_s if scenario is not None else None

    def run_at(rate_rps: float) -> RunResult:
        return run_one(ctx, dep, args.policy, rate_rps, s, scenario, None, warmup)

    def ok(result: RunResult) -> bool:
        return meets_slo(result, s.ttft_slo_s, s.tpot_slo_s)

    max_rate, best = find_max_rate(run_at, ok, 1.5 * planned.throughput_rps)
    summary = {
        "deployment": dep,
        "policy": best.summary["policy"] if best else args.policy,
        "max_rate_rps": max_rate,
        "planner_lambda_max_rps": planned.throughput_rps,
        "ratio_to_planner": max_rate / planned.throughput_rps,
        "ttft_slo_s": s.ttft_slo_s,
        "at_max_rate": best.summary if best else None,
    }
    _emit(args, summary)
    return 0


def _emit(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
        print(f"{key:>22}: {_fmt(value)}")


def _plots(args: argparse.Namespace, runs: dict[str, RunResult], prefix: str) -> None:
    if args.plot:
        from prfaas.sim.plots import write_plots

        for path in write_plots(runs, Path(args.plot), prefix):
            print(f"wrote {path}", file=sys.stderr)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
