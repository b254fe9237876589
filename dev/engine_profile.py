"""torch.profiler over prfaas alone: the 2K prefill or the seeded serving mix of
``benchmarks/engine.py`` (same model, threads and limits), after one warm-up run.

    .venv/bin/python dev/engine_profile.py prefill [rows]        # rows of the op table
    .venv/bin/python dev/engine_profile.py serving 64 [rows]     # requests

Prints the ops by self CPU time and the run's wall time (the profiler adds a few percent).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from engine import prfaas_serving, workload
from prfaas import LLM, SamplingParams
from prfaas.config import default_cache_dir
from prfaas.model.loader import resolve_model_folder


def main() -> None:
    what = sys.argv[1]
    num_requests = int(sys.argv[2]) if what == "serving" else 0
    rows = (
        int(sys.argv[3 if what == "serving" else 2])
        if len(sys.argv) > 2 + (what == "serving")
        else 25
    )
    torch.set_num_threads(2)
    folder = resolve_model_folder(None, default_cache_dir())
    vocab = int(json.loads((folder / "config.json").read_text())["vocab_size"])
    reqs = workload(max(num_requests, 2), 0, vocab)
    llm = LLM(
        None, num_threads=2, kv_cache_memory_gb=0.5, max_num_seqs=64, max_num_batched_tokens=2048
    )
    long = [random.Random(1).randrange(100, 49000) for _ in range(2048)]
    one = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)

    def run() -> None:
        llm.engine.kv.pool.reset_cache()
        if what == "serving":
            prfaas_serving(llm, reqs)
        else:
            llm.generate([long], one)

    prfaas_serving(llm, reqs[:2])  # warm-up
    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        run()
        wall = time.perf_counter() - t0
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    print(f"{what}: {wall:.2f} s under the profiler")


if __name__ == "__main__":
    main()
