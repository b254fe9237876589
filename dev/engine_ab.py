"""prfaas alone, two source trees alternating: the 2K prefill or the seeded serving mix of
``benchmarks/engine.py`` (same model, threads and limits), each round one fresh process per
tree, back to back, so both see the same load. Prints each run and the medians.

    git archive BASE | tar -x -C /tmp/base          # the tree to compare against
    .venv/bin/python dev/engine_ab.py /tmp/base/src prefill 5   # base src, workload, rounds
    .venv/bin/python dev/engine_ab.py /tmp/base/src serving 3 [64]   # ... requests

The other tree is this checkout's ``src``. A process runs one warm-up, then the workload
once (prefill: twice, the faster kept; process start-up and loading are not timed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(what: str, num_requests: int) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from engine import run_workload, warmed_prfaas

    llm, reqs = warmed_prfaas(num_requests)
    runs = 1 if what == "serving" else 2
    seconds = min(run_workload(llm, what, reqs) for _ in range(runs))
    print(json.dumps({"s": seconds, "tok": sum(n for _, n in reqs)}))


def main() -> None:
    if sys.argv[1] == "child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    base, what, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    num_requests = sys.argv[4] if len(sys.argv) > 4 else "64"
    trees = {"base": str(Path(base).resolve()), "this": str(ROOT / "src")}
    times: dict[str, list[float]] = {name: [] for name in trees}
    tokens = 0
    for _ in range(rounds):
        for name, src in trees.items():
            env = {**os.environ, "PYTHONPATH": src}
            done = subprocess.run(
                [sys.executable, __file__, "child", what, num_requests],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=1800,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            times[name].append(result["s"])
            tokens = result["tok"]
            print(f"{name} {result['s']:.2f} s", flush=True)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from engine import print_medians

    print_medians(times, what, tokens)


if __name__ == "__main__":
    main()
