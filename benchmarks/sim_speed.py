"""Simulator speed: one simulated hour of the paper's case study at 3 req/s (about 11K
requests), PrfaaS-PD under the static and the adaptive policy. Goal: <= 15 s wall each on
a 2-core machine (issue 5).

    .venv/bin/python benchmarks/sim_speed.py [--rate 3] [--duration 3600] [--repeat 3] [--json]

Reported: wall seconds of the run itself (best of ``--repeat``; loading the config and
solving the plan included, Python start-up excluded), requests simulated (no warm-up
window, so every arrival counts) and requests per wall second.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from prfaas.sim.config import settings
from prfaas.sim.runner import SimContext, run_one

CASE = Path(__file__).parents[1] / "examples/paper/case-study.yaml"
GOAL_S = 15.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=3600.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ctx = SimContext.load(CASE)
    s = settings({"duration_s": args.duration, "warmup_s": 0}, {}, "benchmark")
    rows: list[dict[str, Any]] = []
    for policy in ("prfaas-static", "prfaas-adaptive"):
        walls = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = run_one(ctx, "PrfaaS-PD", policy, args.rate, s)
            walls.append(time.perf_counter() - start)
        best = min(walls)
        arrivals = len(result.requests)
        rows.append(
            {
                "policy": policy,
                "simulated_s": args.duration,
                "rate_rps": args.rate,
                "requests": arrivals,
                "wall_s": best,
                "requests_per_wall_s": arrivals / best,
                "goal_s": GOAL_S,
                "met": best <= GOAL_S,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        print(
            f"{row['policy']:>16}: {row['simulated_s']:.0f} s simulated at {row['rate_rps']} "
            f"req/s, {row['requests']} requests, {row['wall_s']:.2f} s wall "
            f"(goal <= {GOAL_S:.0f} s: {'met' if row['met'] else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
