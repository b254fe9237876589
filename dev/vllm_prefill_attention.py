"""The peer's prefill attention on the same problem as ``dev/prefill_attention.py``: vLLM's
CPU attention op (``cpu_attention_with_kv_cache``, what its CPU backend calls, reading the
paged cache) against prfaas's C kernel (``model/prefill_kernel.py``, what the engine calls
on a CPU, reading its own paged cache) and PyTorch's SDPA (prfaas's reference path), one
SmolLM2 layer's causal attention over a 2048-token prompt (9 query heads of 64, 3 KV heads,
float32; vLLM: 32-token blocks, its "vec" ISA path; prfaas: 16-token blocks), 2 threads,
one process, the same q, k and v. Checks that they agree within 1e-4; best and median of 9
runs after a warm-up.
Run with vLLM's venv (``make setup-vllm``); prfaas is imported from this checkout's src:

    .venv-vllm/bin/python dev/vllm_prefill_attention.py
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

# This checkout's prfaas, ahead of the one .venv-vllm has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
import torch.nn.functional as F
import vllm._custom_ops as ops
from prefill_attention import best_and_median_ms, paged_kernel  # this folder's

HEADS, KV_HEADS, HEAD_DIM, TOKENS, BLOCK = 9, 3, 64, 2048, 32


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    q = torch.randn(TOKENS, HEADS, HEAD_DIM)
    k, v = torch.randn(TOKENS, KV_HEADS, HEAD_DIM), torch.randn(TOKENS, KV_HEADS, HEAD_DIM)
    num_blocks = TOKENS // BLOCK
    # vLLM's CPU layout: (blocks, KV heads, block, 2 * head_dim), keys then values.
    cache = torch.zeros(num_blocks, KV_HEADS, BLOCK, 2 * HEAD_DIM)
    k_cache, v_cache = cache.view(num_blocks, KV_HEADS, 2 * BLOCK, HEAD_DIM).chunk(2, dim=2)
    ops.cpu_attn_reshape_and_cache(
        k, v, k_cache, v_cache, torch.arange(TOKENS, dtype=torch.int64), "vec"
    )
    starts = torch.tensor([0, TOKENS], dtype=torch.int32)
    lens = torch.tensor([TOKENS], dtype=torch.int32)
    table = torch.arange(num_blocks, dtype=torch.int32)[None]
    meta = ops.cpu_attn_get_scheduler_metadata(
        1, HEADS, KV_HEADS, HEAD_DIM, lens, torch.float32, starts, True, -1, "vec", False
    )
    out = torch.empty_like(q)
    scale = HEAD_DIM**-0.5

    def vllm_op() -> None:
        ops.cpu_attention_with_kv_cache(
            q, k_cache, v_cache, out, starts, lens, scale, True, None, -1, table, 0.0, meta, None
        )

    def sdpa() -> torch.Tensor:
        group = HEADS // KV_HEADS
        qs = q.transpose(0, 1)[None]
        ks = k.transpose(0, 1).repeat_interleave(group, 0)[None]
        vs = v.transpose(0, 1).repeat_interleave(group, 0)[None]
        return F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)[0].transpose(0, 1)

    # (n, Hkv, d) -> (Hkv, n, d), as prefill_attention.py lays them out
    kernel = paged_kernel(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
    vllm_op()
    torch.testing.assert_close(out, sdpa(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(kernel(), out, atol=1e-4, rtol=1e-4)
    flop = 4 * HEADS * HEAD_DIM * TOKENS * (TOKENS + 1) / 2  # QK^T and PV, causal
    ways: dict[str, Callable[[], object]] = {
        "vLLM's CPU op": vllm_op,
        "prfaas C kernel": kernel,
        "SDPA (reference)": sdpa,
    }
    for name, fn in ways.items():
        fn()
        best, median = best_and_median_ms(fn, runs=9)
        rate = flop / best / 1e6
        print(f"{name:<16} best {best:6.1f} ms  median {median:6.1f} ms  {rate:5.0f} GFLOP/s")


if __name__ == "__main__":
    main()
