"""Decode attention: the in-place kernel against gather + SDPA, in CPU time on one thread.

    .venv/bin/python dev/decode_attention.py layer     # one layer, random paged caches
    .venv/bin/python dev/decode_attention.py step 8 300  # whole SmolLM2 decode steps
    .venv/bin/python dev/decode_attention.py batch1 [heap|no-heap]  # glibc heap thresholds

CPU time (``time.process_time``), not wall time: the machine is shared, and a preempted
process still counts only what it ran. ``layer``: best of 25 calls per shape (SmolLM2's 9
query / 3 KV heads of 64, blocks of 16 from a 3,000-block cache, context lengths drawn from
[n/2, 3n/2]). ``step D N``: D requests with N-token prompts decoding, both paths in one
process, best of 3 rounds of 8 steps each. ``batch1``: CPU time a token of one 32-token
prompt's decode (64 tokens less 1), best of 3, with or without ``engine/host_memory.py``'s
glibc heap thresholds (one process each: they are process-wide).
"""

from __future__ import annotations

import functools
import random
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from prfaas import LLM, SamplingParams
from prfaas.engine import host_memory
from prfaas.engine.runner import _decode_groups, context_slots, padded_tables
from prfaas.model import decode_kernel
from prfaas.model.attention import AttentionMetadata, paged_attention


def best_ms(fn: Callable[[], object], n: int = 25) -> float:
    fn()
    best = float("inf")
    for _ in range(n):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best * 1e3


def layer() -> None:
    num_kv_heads, group, head_dim, block_size, num_blocks = 3, 3, 64, 16, 3000
    k_cache = torch.randn(num_blocks * block_size, num_kv_heads, head_dim)
    v_cache = torch.randn(num_blocks * block_size, num_kv_heads, head_dim)
    rng = random.Random(0)
    for rows, ctx in [(1, 160), (8, 600), (32, 600), (64, 400)]:
        lens = np.array([rng.randint(ctx // 2, ctx * 3 // 2) for _ in range(rows)])
        tables = [rng.sample(range(num_blocks), -(-int(n) // block_size)) for n in lens]
        tables_np = padded_tables(tables, lens, block_size)
        slots, valid = context_slots(tables_np, lens, block_size)
        row_ids = np.arange(rows, dtype=np.int64)
        q = torch.randn(rows, num_kv_heads * (group + 2), head_dim)[:, : num_kv_heads * group]
        meta = AttentionMetadata(
            torch.zeros(0, dtype=torch.long),
            [],
            torch.from_numpy(row_ids),
            torch.from_numpy(slots),
            torch.from_numpy(valid)[:, None, None, :],
            _decode_groups(torch.device("cpu"), row_ids, lens, slots, valid),
        )
        run = functools.partial(paged_attention, q, q, q, k_cache, v_cache, meta, 0.125)
        ref = best_ms(run)
        meta.decode_tables, meta.decode_lens = torch.from_numpy(tables_np), torch.from_numpy(lens)
        meta.block_size = block_size
        ours = best_ms(run)
        print(f"{rows} rows, ~{ctx} tokens: gather + SDPA {ref:.2f} ms, kernel {ours:.2f} ms")


def step(rows: int, prompt_len: int) -> None:
    llm = LLM(None, num_threads=1, kv_cache_memory_gb=0.25)
    engine, rng = llm.engine, random.Random(0)
    for _ in range(rows):
        prompt = [rng.randrange(100, 40000) for _ in range(prompt_len)]
        engine.add_request(prompt, SamplingParams(max_tokens=400, temperature=0, ignore_eos=True))
    while engine.scheduler.waiting or any(
        r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.running
    ):
        engine.step()
    usable = decode_kernel.usable
    results: dict[str, list[float]] = {"kernel": [], "gather + SDPA": []}
    for _ in range(3):
        for name, times in results.items():
            decode_kernel.usable = usable if name == "kernel" else (lambda q, k: False)  # type: ignore[assignment]
            engine.step()
            t = time.process_time()
            for _ in range(8):
                engine.step()
            times.append((time.process_time() - t) / 8 * 1e3)
    for name, times in results.items():
        print(f"{rows} rows, ~{prompt_len}-token prompts: {name} {min(times):.1f} ms a step")


def batch1(heap: bool) -> None:
    if not heap:
        host_memory.keep_freed_memory = lambda: False
    llm = LLM(None, num_threads=1, kv_cache_memory_gb=0.25)
    prompt = list(range(100, 132))
    one = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    many = SamplingParams(max_tokens=65, temperature=0, ignore_eos=True)
    llm.generate([prompt], many)
    per_token = []
    for _ in range(3):
        t1 = best_ms(lambda: llm.generate([prompt], one), n=1)
        t65 = best_ms(lambda: llm.generate([prompt], many), n=1)
        per_token.append((t65 - t1) / 64)
    print(f"batch-1 decode, heap thresholds {'on' if heap else 'off'}: {min(per_token):.2f} ms")


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1:2] == ["layer"]:
        layer()
    elif sys.argv[1:2] == ["batch1"]:
        batch1(sys.argv[2:3] != ["no-heap"])
    else:
        step(int(sys.argv[2]), int(sys.argv[3]))
