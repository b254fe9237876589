"""vLLM's CPU engine on ``benchmarks/engine.py``'s workloads, run in vLLM's own venv.

    .venv-vllm/bin/python benchmarks/engine_vllm.py WORKLOAD.json --threads 2

``benchmarks/engine.py`` starts this script itself and hands it the seeded workload it drew
(``{"serving": [[prompt_token_ids, max_tokens], ...], "decode_prompt": [...],
"long_prompt": [...]}``), so both engines run the same token ids. It serves the folder prfaas
converts its embedded SmolLM2 GGUF into, in float32, with the same scheduler limits as the
prfaas engine (64 sequences, 2048 tokens per step, prefix caching off so that a repeat cannot
hit), ``--threads`` OpenMP threads, and prints one JSON line of figures, named as engine.py
names them. The ``__main__`` guard matters: vLLM starts its engine processes with spawn.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-cache-gb", type=float, default=1.0, help="as the prfaas engine gets")
    ap.add_argument("--compile", action="store_true", help="vLLM's torch.compile (slow start)")
    args = ap.parse_args()
    # Read by vLLM's CPU worker at start: no core binding (the machine is shared), the
    # thread count as given.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import torch
    from vllm import LLM, SamplingParams

    from prfaas.config import default_cache_dir
    from prfaas.model.loader import resolve_model_folder

    torch.set_num_threads(args.threads)
    folder = resolve_model_folder(None, default_cache_dir())
    started_s = time.perf_counter()
    llm = LLM(
        model=str(folder),
        dtype="float32",
        max_model_len=4096,
        max_num_seqs=64,
        max_num_batched_tokens=2048,
        enable_prefix_caching=False,
        enforce_eager=not args.compile,
        kv_cache_memory_bytes=int(args.kv_cache_gb * (1 << 30)),
        seed=0,
    )
    ready_s = time.perf_counter() - started_s
    with open(args.workload) as f:
        spec = json.load(f)
    reqs = [(list(p), int(n)) for p, n in spec["serving"]]

    def run(batch: list[tuple[list[int], int]]) -> float:
        prompts: list[Any] = [{"prompt_token_ids": p} for p, _ in batch]
        params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for _, n in batch]
        t0 = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - t0

    run(reqs[:2])  # warm-up
    results: dict[str, float] = {"vllm_ready_s": ready_s}
    results["vllm_serving_tok_s"] = sum(n for _, n in reqs) / run(reqs)
    prompt = spec["decode_prompt"]
    results["vllm_decode_b1_tok_s"] = 128 / (run([(prompt, 129)]) - run([(prompt, 1)]))
    # The better of two, as for the other engines (prefix caching is off: both compute it all).
    results["vllm_prefill_2048_s"] = min(run([(spec["long_prompt"], 1)]) for _ in range(2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
