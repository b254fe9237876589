"""Simulated max rate against the planner's Λ_max for the case study's three deployments.

    .venv/bin/python benchmarks/sim_max_rate.py [--ttft-slo 30 60] [--duration 3600] [--json]

For each deployment and TTFT bound: the bisection of ``prfaas simulate --find-max-rate``
(steady Poisson traffic, SLO attainment >= 90% over the window and its last quarter),
divided by the planner's Λ_max. Acceptance (issue 5): within 10%.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prfaas.planner.search import plan
from prfaas.sim.config import SimSettings, settings
from prfaas.sim.metrics import RunResult
from prfaas.sim.runner import SimContext, find_max_rate, meets_slo, run_one

CASE = Path(__file__).parents[1] / "examples/paper/case-study.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ttft-slo", type=float, nargs="+", default=[30.0, 60.0])
    parser.add_argument("--duration", type=float, default=3600.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ctx = SimContext.load(CASE)
    rows: list[dict[str, Any]] = []
    for slo in args.ttft_slo:
        s = settings({"duration_s": args.duration, "ttft_slo_s": slo}, {}, "benchmark")
        for d in ctx.inputs.deployments:
            lam = plan(d, ctx.inputs.workload, ctx.inputs.output_tokens, 50).throughput_rps

            def run_at(rate: float, name: str = d.name, s: SimSettings = s) -> RunResult:
                return run_one(ctx, name, None, rate, s)

            def ok(result: RunResult, s: SimSettings = s) -> bool:
                return meets_slo(result, s.ttft_slo_s, s.tpot_slo_s)

            rate, _ = find_max_rate(run_at, ok, 1.5 * lam)
            rows.append(
                {
                    "deployment": d.name,
                    "ttft_slo_s": slo,
                    "planner_rps": lam,
                    "sim_rps": rate,
                    "ratio": rate / lam,
                    "within_10pct": abs(rate / lam - 1) <= 0.10,
                }
            )
            if not args.json:
                r = rows[-1]
                print(
                    f"{r['deployment']:>24} TTFT<={slo:.0f}s: planner {lam:.3f}, sim {rate:.3f} "
                    f"req/s ({r['ratio'] - 1:+.1%}, {'within' if r['within_10pct'] else 'OUTSIDE'}"
                    " 10%)",
                    flush=True,
                )
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
