"""Does the engine keep something after serving that slows its next long prefill? Rounds of
two fresh processes, back to back: one serves ``benchmarks/engine.py``'s seeded mix and then
times the 2K prefill (the order engine.py measures them in), the other times the 2K prefill
alone; both keep the better of two prefills. Prints each process's figures.

    .venv/bin/python dev/prefill_after_serving.py [rounds] [requests]   # default 2 64
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def child(what: str, num_requests: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from engine import run_workload, warmed_prfaas

    llm, reqs = warmed_prfaas(num_requests)
    out = {}
    if what == "after":
        out["serving_s"] = run_workload(llm, "serving", reqs)
    out["prefill_s"] = min(run_workload(llm, "prefill", reqs) for _ in range(2))
    print(json.dumps(out))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    num_requests = sys.argv[2] if len(sys.argv) > 2 else "64"
    for _ in range(rounds):
        for what in ("after", "alone"):
            done = subprocess.run(
                [sys.executable, __file__, "child", what, num_requests],
                capture_output=True,
                text=True,
                check=True,
                timeout=1800,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            served = (
                f"serving mix {result['serving_s']:.1f} s, then " if "serving_s" in result else ""
            )
            print(f"{what:<6} {served}2K prefill {result['prefill_s']:.2f} s", flush=True)


if __name__ == "__main__":
    main()
