"""A 2K prefill's attention for one SmolLM2 layer (9 query heads of 64 over 3 KV heads,
causal, float32) on the CPU, four ways: the engine's C kernel over the paged cache
(``model/prefill_kernel.py``, what ``model/attention.py`` calls on a CPU); PyTorch's SDPA
(its CPU flash kernel, the reference path, K/V heads expanded first); a blocked causal
attention out of batched matmuls (query blocks of B rows, each against the keys up to its
end, the diagonal block masked); and SDPA split into query chunks of C rows, each a causal
square on the diagonal plus a full (unmasked) block against the keys before it, merged by
their log-sum-exps (so no masked block is computed in vain). Checks that they agree, then
prints the best and median of 7 runs each, with the FLOP rate of the causal work, and the
non-causal SDPA over the same tensors (twice the work, no masking) for its rate.

    .venv/bin/python dev/prefill_attention.py [threads]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from prfaas.model import prefill_kernel

HEADS, KV_HEADS, TOKENS, HEAD_DIM, BLOCK = 9, 3, 2048, 64, 16


def blocked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int) -> torch.Tensor:
    """q, k, v (H, n, d) -> (H, n, d), causal."""
    n, scale = q.shape[1], q.shape[-1] ** -0.5
    out = torch.empty_like(q)
    for s in range(0, n, block):
        e = min(n, s + block)
        scores = torch.bmm(q[:, s:e] * scale, k[:, :e].transpose(1, 2))  # (H, e-s, e)
        future = torch.ones(e - s, e - s, dtype=torch.bool).triu_(1)
        scores[:, :, s:e].masked_fill_(future, float("-inf"))
        out[:, s:e] = torch.bmm(torch.softmax(scores, -1), v[:, :e])
    return out


def split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int) -> torch.Tensor:
    """q, k, v (H, n, d) -> (H, n, d), causal: per query chunk, SDPA's causal square on the
    diagonal and its full attention over the earlier keys, merged by log-sum-exp."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    n = q.shape[1]
    out = torch.empty_like(q)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        qs = q[None, :, s:e]
        diag, lse_diag = flash(qs, k[None, :, s:e], v[None, :, s:e], 0.0, True)
        if s == 0:
            out[:, s:e] = diag[0]
            continue
        past, lse_past = flash(qs, k[None, :, :s], v[None, :, :s], 0.0, False)
        top = torch.maximum(lse_diag, lse_past)
        w_diag, w_past = (lse_diag - top).exp(), (lse_past - top).exp()
        total = w_diag + w_past
        out[:, s:e] = (diag * (w_diag / total)[..., None] + past * (w_past / total)[..., None])[0]
    return out


def paged_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Callable[[], object]:
    """The engine's kernel on q (H, n, d) and k, v (Hkv, n, d) laid in a paged cache on
    shuffled blocks; the call writes (n, H, d) into the tensor it returns."""
    n = q.shape[1]
    num_blocks = -(-n // BLOCK)
    table = torch.randperm(num_blocks)
    pos = torch.arange(n)
    slots = table[pos // BLOCK] * BLOCK + pos % BLOCK
    k_cache = torch.zeros(num_blocks * BLOCK, *k.shape[::2])
    v_cache = torch.zeros_like(k_cache)
    k_cache[slots], v_cache[slots] = k.transpose(0, 1), v.transpose(0, 1)
    q_rows = q.transpose(0, 1).contiguous()  # (n, H, d)
    out = torch.empty_like(q_rows)
    spans = torch.tensor([[0, n, 0]])
    tables = table[None].contiguous()

    def run() -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        prefill_kernel.prefill_attention(q_rows, k_cache, v_cache, out, spans, tables, BLOCK, scale)
        return out

    return run


def best_and_median_ms(fn: Callable[[], object], runs: int = 7) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[0] * 1e3, times[runs // 2] * 1e3


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    torch.manual_seed(0)
    q = torch.randn(HEADS, TOKENS, HEAD_DIM)
    k_grouped, v_grouped = (torch.randn(KV_HEADS, TOKENS, HEAD_DIM) for _ in range(2))
    # Each KV head repeated for its query group: what SDPA and the others take.
    k, v = (x.repeat_interleave(HEADS // KV_HEADS, 0) for x in (k_grouped, v_grouped))

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0]

    def sdpa_full() -> torch.Tensor:
        return F.scaled_dot_product_attention(q[None], k[None], v[None])[0]

    ref = sdpa()
    ways: dict[str, Callable[[], object]] = {"sdpa (flash)": sdpa}
    if prefill_kernel.load() is not None:
        kernel = paged_kernel(q, k_grouped, v_grouped)
        torch.testing.assert_close(kernel().transpose(0, 1), ref, atol=1e-4, rtol=1e-4)
        ways = {"prfaas C kernel": kernel, **ways}
    for block in (128, 256, 512):
        torch.testing.assert_close(blocked(q, k, v, block), ref, atol=1e-4, rtol=1e-4)
        ways[f"blocked bmm, B={block}"] = lambda b=block: blocked(q, k, v, b)  # type: ignore[misc]
    for chunk in (256, 512, 1024):
        torch.testing.assert_close(split(q, k, v, chunk), ref, atol=1e-4, rtol=1e-4)
        ways[f"split sdpa, C={chunk}"] = lambda c=chunk: split(q, k, v, c)  # type: ignore[misc]
    causal_flop = 4 * HEADS * HEAD_DIM * TOKENS * (TOKENS + 1) / 2  # QK^T and PV, causal
    rows = [(name, fn, causal_flop) for name, fn in ways.items()]
    rows.append(("sdpa, not causal", sdpa_full, 4 * HEADS * HEAD_DIM * TOKENS * TOKENS))
    for name, fn, flop in rows:
        best, median = best_and_median_ms(fn)
        rate = flop / best / 1e6
        print(f"{name:<20} best {best:6.1f} ms  median {median:6.1f} ms  {rate:5.0f} GFLOP/s")


if __name__ == "__main__":
    main()
