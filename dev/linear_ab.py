"""prfaas alone, F.linear against the oneDNN-packed ``Linear``, alternating in one process
(same model, same load): the 2K prefill or the seeded serving mix of ``benchmarks/engine.py``.

    .venv/bin/python dev/linear_ab.py prefill 2 4     # workload, requests, repetitions
    .venv/bin/python dev/linear_ab.py serving 64 3
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from engine import print_medians, run_workload, warmed_prfaas
from prfaas.model import layers


def main() -> None:
    what, num_requests, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    llm, reqs = warmed_prfaas(num_requests)
    packed = layers.Linear.forward
    times: dict[str, list[float]] = {"F.linear": [], "oneDNN": []}
    for _ in range(reps):
        for mode in times:
            layers.Linear.forward = nn.Linear.forward if mode == "F.linear" else packed  # type: ignore[method-assign]
            times[mode].append(run_workload(llm, what, reqs))
            print(f"{mode} {times[mode][-1]:.2f} s", flush=True)
    print_medians(times, what, sum(n for _, n in reqs))


if __name__ == "__main__":
    main()
