"""torch.profiler over prfaas alone: the 2K prefill or the seeded serving mix of
``benchmarks/engine.py`` (same model, threads and limits), after one warm-up run.

    .venv/bin/python dev/engine_profile.py prefill [rows]        # rows of the op table
    .venv/bin/python dev/engine_profile.py serving 64 [rows]     # requests

Prints the ops by self CPU time and the run's wall time (the profiler adds a few percent).
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from engine import run_workload, warmed_prfaas


def main() -> None:
    what = sys.argv[1]
    num_requests = int(sys.argv[2]) if what == "serving" else 0
    rows = (
        int(sys.argv[3 if what == "serving" else 2])
        if len(sys.argv) > 2 + (what == "serving")
        else 25
    )
    llm, reqs = warmed_prfaas(num_requests)
    run_workload(llm, what, reqs)  # a second warm-up: the workload's own shapes
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = run_workload(llm, what, reqs)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    print(f"{what}: {wall:.2f} s under the profiler")


if __name__ == "__main__":
    main()
