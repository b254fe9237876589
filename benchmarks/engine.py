"""Engine benchmark: prfaas against transformers ``generate`` on SmolLM2, one process, one run.

    .venv/bin/python benchmarks/engine.py [--num-requests 64] [--threads 2] [--json]

Workloads (fp32, CPU, ``--threads`` torch threads, the same seeded prompts for both):
- serving-like: N requests, prompt lengths 32-1024 and output lengths 16-256 drawn from a
  fixed seed; transformers runs static batches of 16 (left padding, each batch generating up
  to its longest output); prfaas gets all requests at once (continuous batching). Both
  ignore EOS so every request produces exactly its output length. Reported: generated
  tokens per second, counting each request's own output tokens only.
- batch-1 decode: a 32-token prompt, 128 new tokens, tokens/s after the first.
- prefill: one 2048-token prompt, seconds to the first token.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from typing import Any

import torch

from prfaas import LLM, SamplingParams


def workload(n: int, seed: int, vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt_len = rng.randint(32, 1024)
        out.append(([rng.randrange(100, vocab) for _ in range(prompt_len)], rng.randint(16, 256)))
    return out


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Transformers:
    def __init__(self, folder: str) -> None:
        import transformers

        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32
        ).eval()
        self.pad_id = 0

    def generate_batch(self, batch: list[tuple[list[int], int]]) -> None:
        width = max(len(p) for p, _ in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (p, _) in enumerate(batch):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        max_new = max(n for _, n in batch)
        with torch.inference_mode():
            self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new,
                min_new_tokens=max_new,
                do_sample=False,
                pad_token_id=self.pad_id,
            )

    def serving(self, reqs: list[tuple[list[int], int]], batch_size: int) -> None:
        for i in range(0, len(reqs), batch_size):
            self.generate_batch(reqs[i : i + batch_size])


def prfaas_serving(llm: LLM, reqs: list[tuple[list[int], int]]) -> None:
    engine = llm.engine
    for prompt, n in reqs:
        engine.add_request(prompt, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    llm = LLM(
        None,
        num_threads=args.threads,
        kv_cache_memory_gb=4.0,
        max_num_seqs=64,
        max_num_batched_tokens=2048,
    )
    hf = Transformers(str(llm.engine.loaded.folder))
    reqs = workload(args.num_requests, args.seed, llm.engine.vocab_size)
    useful = sum(n for _, n in reqs)

    results: dict[str, float] = {}
    # Warm-up both once on a tiny input.
    prfaas_serving(llm, reqs[:2])
    hf.generate_batch(reqs[:2])

    results["prfaas_serving_tok_s"] = useful / timed(lambda: prfaas_serving(llm, reqs))
    results["hf_serving_tok_s"] = useful / timed(lambda: hf.serving(reqs, 16))

    prompt = reqs[0][0][:32]
    one = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    many = SamplingParams(max_tokens=129, temperature=0, ignore_eos=True)
    t1 = timed(lambda: llm.generate([prompt], one))
    t129 = timed(lambda: llm.generate([prompt], many))
    results["prfaas_decode_b1_tok_s"] = 128 / (t129 - t1)
    h1 = timed(lambda: hf.generate_batch([(prompt, 1)]))
    h129 = timed(lambda: hf.generate_batch([(prompt, 129)]))
    results["hf_decode_b1_tok_s"] = 128 / (h129 - h1)

    long_prompt = [random.Random(1).randrange(100, 49000) for _ in range(2048)]
    llm.engine.kv.pool.reset_cache()
    results["prfaas_prefill_2048_s"] = timed(lambda: llm.generate([long_prompt], one))
    results["hf_prefill_2048_s"] = timed(lambda: hf.generate_batch([(long_prompt, 1)]))

    results["serving_ratio"] = results["prfaas_serving_tok_s"] / results["hf_serving_tok_s"]
    results["decode_b1_ratio"] = results["prfaas_decode_b1_tok_s"] / results["hf_decode_b1_tok_s"]
    results["prefill_ratio"] = results["hf_prefill_2048_s"] / results["prfaas_prefill_2048_s"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"SmolLM2-135M fp32, CPU, {args.threads} threads, {args.num_requests} requests, "
        f"{useful} generated tokens"
    )
    print(f"{'workload':<34}{'prfaas':>12}{'transformers':>14}{'ratio':>8}")
    print(
        f"{'serving-like (generated tok/s)':<34}{results['prfaas_serving_tok_s']:>12.1f}"
        f"{results['hf_serving_tok_s']:>14.1f}{results['serving_ratio']:>7.2f}x"
    )
    print(
        f"{'batch-1 decode (tok/s)':<34}{results['prfaas_decode_b1_tok_s']:>12.1f}"
        f"{results['hf_decode_b1_tok_s']:>14.1f}{results['decode_b1_ratio']:>7.2f}x"
    )
    print(
        f"{'2048-token prefill (s)':<34}{results['prfaas_prefill_2048_s']:>12.2f}"
        f"{results['hf_prefill_2048_s']:>14.2f}{results['prefill_ratio']:>7.2f}x"
    )


if __name__ == "__main__":
    main()
