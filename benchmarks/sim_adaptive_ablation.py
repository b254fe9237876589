"""Where the adaptive policy gains or loses against the static one, piece by piece.

    .venv/bin/python benchmarks/sim_adaptive_ablation.py [--scenario mooncake conversation
        lognormal] [--seeds 0 1 2] [--json]

On the routing scenarios of ``examples/paper/routing.yaml`` (the case study with prefix
caches), per workload in one run each: prfaas-static; prfaas-adaptive with its mode held at
scarce (no abundant mode, so no prefix pulls); with the long-term re-plan off (no role
changes, t_plan fixed); and the full adaptive policy. Each row: mean / P99 TTFT, hit rate,
share offloaded to PrfaaS, prefix pulls, role changes, each the mean over ``--seeds`` (the
trace replays its own timestamps, so it runs once).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prfaas.router.policies import PrfaasThreshold
from prfaas.router.types import PathChoice, RouteRequest, RouterState
from prfaas.sim.build import build_setup, find_deployment
from prfaas.sim.config import LoadedConfig, load_sim_config, settings
from prfaas.sim.runner import (
    SimContext,
    conversation_workload,
    fleet_options,
    run_config,
    workload,
)
from prfaas.sim.simulator import Simulator

ROUTING = Path(__file__).parents[1] / "examples/paper/routing.yaml"
NO_REPLAN = {"long_interval_s": 1e9}
# label: (policy, ControlConfig overrides, abundant mode pulls by the paper's rule alone)
VARIANTS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "static": ("prfaas-static", {}, False),
    "adaptive, no pulls": ("prfaas-adaptive", {"adapt_mode": False}, False),
    "adaptive, paper pulls, no re-plan": ("prfaas-adaptive", NO_REPLAN, True),
    "adaptive, paper pulls": ("prfaas-adaptive", {}, True),
    "adaptive, no re-plan": ("prfaas-adaptive", NO_REPLAN, False),
    "adaptive": ("prfaas-adaptive", {}, False),
}


class PaperPulls:
    """The threshold rule without the control loop's ``PathCosts``: abundant mode pulls
    whenever the longer prefix sits in the other cluster (the paper's rule)."""

    name = "prfaas"

    def choose(
        self,
        request: RouteRequest,
        cached_tokens: Mapping[str, int],
        pd_cluster: str,
        prfaas_clusters: Sequence[str],
        state: RouterState,
    ) -> PathChoice:
        return PrfaasThreshold().choose(
            request,
            cached_tokens,
            pd_cluster,
            prfaas_clusters,
            dataclasses.replace(state, costs=None),
        )


def run_once(
    loaded: LoadedConfig,
    base: SimContext,
    name: str,
    seed: int,
    policy: str,
    control: dict[str, Any],
    paper_pulls: bool,
) -> dict[str, float]:
    sc = loaded.scenarios[name]
    s = dataclasses.replace(settings(loaded.defaults, sc.settings, str(ROUTING)), seed=seed)
    ctx = base
    if sc.trace is not None:
        ctx = base.for_trace((loaded.plan_path.parent / sc.trace.path).resolve(), s)
    if sc.conversation is not None:
        ctx = base.for_requests(list(conversation_workload(sc.conversation, s)), s)
    deployment = find_deployment(ctx.inputs, sc.deployment or "PrfaaS-PD")
    options = fleet_options(s, sc)
    options = dataclasses.replace(options, control=dataclasses.replace(options.control, **control))
    setup = build_setup(ctx.inputs, deployment, policy, options)
    run = setup.policy
    if paper_pulls:
        run = dataclasses.replace(run, path_policy=PaperPulls())
    traffic = workload(ctx, s, sc, sc.rate_rps)
    r = Simulator(setup.fleet, run, traffic, run_config(s)).run().summary
    return {
        "ttft_mean_s": r["ttft_mean_s"],
        "ttft_p99_s": r["ttft_p99_s"],
        "cache_hit_rate": r["cache_hit_rate"],
        "offload_fraction": r["offload_fraction"],
        "prefix_pulls": r["prefix_pulls"],
        "role_changes": len(r["role_changes"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", nargs="+", default=["mooncake", "conversation", "lognormal"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    loaded = load_sim_config(ROUTING)
    base = SimContext.load(loaded.plan_path)
    rows: list[dict[str, Any]] = []
    for name in args.scenario:
        sc = loaded.scenarios[name]
        seeds = [0] if sc.trace is not None else args.seeds
        for label, (policy, control, paper_pulls) in VARIANTS.items():
            runs = [
                run_once(loaded, base, name, seed, policy, control, paper_pulls) for seed in seeds
            ]
            x: dict[str, Any] = {"scenario": name, "variant": label, "seeds": seeds}
            for key in runs[0]:
                x[key] = sum(r[key] for r in runs) / len(runs)
            rows.append(x)
            if not args.json:
                print(
                    f"{name:>12} {label:>33}: TTFT mean {x['ttft_mean_s']:.3f} s, "
                    f"P99 {x['ttft_p99_s']:.2f} s, hit {x['cache_hit_rate']:.1%}, "
                    f"offloaded {x['offload_fraction']:.1%}, pulls {x['prefix_pulls']:.0f}, "
                    f"role changes {x['role_changes']:.1f}",
                    flush=True,
                )
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
