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
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(what: str, num_requests: int) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from engine import prfaas_serving, workload
    from prfaas import LLM, SamplingParams
    from prfaas.config import default_cache_dir
    from prfaas.model.loader import resolve_model_folder

    torch.set_num_threads(2)
    folder = resolve_model_folder(None, default_cache_dir())
    vocab = int(json.loads((folder / "config.json").read_text())["vocab_size"])
    reqs = workload(num_requests, 0, vocab)
    llm = LLM(
        None, num_threads=2, kv_cache_memory_gb=0.5, max_num_seqs=64, max_num_batched_tokens=2048
    )
    prfaas_serving(llm, reqs[:2])  # warm-up
    long = [random.Random(1).randrange(100, 49000) for _ in range(2048)]
    one = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    times = []
    for _ in range(1 if what == "serving" else 2):
        llm.engine.kv.pool.reset_cache()
        t0 = time.perf_counter()
        if what == "serving":
            prfaas_serving(llm, reqs)
        else:
            llm.generate([long], one)
        times.append(time.perf_counter() - t0)
    result = {"s": min(times), "tok": sum(n for _, n in reqs)}
    print(json.dumps(result))


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
    for name, ts in times.items():
        med = statistics.median(ts)
        rate = f", {tokens / med:.1f} generated tok/s" if what == "serving" else ""
        print(f"{name}: median {med:.2f} s{rate} (runs {', '.join(f'{t:.2f}' for t in ts)})")


if __name__ == "__main__":
    main()
