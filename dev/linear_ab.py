"""prfaas alone, F.linear against the oneDNN-packed ``Linear``, alternating in one process
(same model, same load): the 2K prefill or the seeded serving mix of ``benchmarks/engine.py``.

    .venv/bin/python dev/linear_ab.py prefill 2 4     # workload, requests, repetitions
    .venv/bin/python dev/linear_ab.py serving 64 3
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from engine import prfaas_serving, workload
from prfaas import LLM, SamplingParams
from prfaas.config import default_cache_dir
from prfaas.model import layers
from prfaas.model.loader import resolve_model_folder


def main() -> None:
    what, num_requests, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
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
    packed = layers.Linear.forward
    times: dict[str, list[float]] = {"F.linear": [], "oneDNN": []}
    for _ in range(reps):
        for mode in times:
            layers.Linear.forward = nn.Linear.forward if mode == "F.linear" else packed  # type: ignore[method-assign]
            llm.engine.kv.pool.reset_cache()
            t0 = time.perf_counter()
            if what == "serving":
                prfaas_serving(llm, reqs)
            else:
                llm.generate([long], one)
            times[mode].append(time.perf_counter() - t0)
            print(f"{mode} {times[mode][-1]:.2f} s", flush=True)
    useful = sum(n for _, n in reqs)
    for mode, ts in times.items():
        med = statistics.median(ts)
        rate = f", {useful / med:.1f} generated tok/s" if what == "serving" else ""
        print(f"{mode}: median {med:.2f} s{rate}")


if __name__ == "__main__":
    main()
