"""The in-place decode attention kernel equals the reference path (gather + SDPA) on random
paged caches: any GQA grouping, contexts of one token to several blocks, partial last
blocks, strided queries, mixed with prefill rows, one and several threads."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from prfaas.engine.runner import context_slots, padded_tables
from prfaas.model import decode_kernel
from prfaas.model.attention import AttentionMetadata, PrefillSegment, paged_attention

pytestmark = pytest.mark.skipif(
    decode_kernel.load() is None, reason="no C compiler: the kernel is not built here"
)


def _case(
    rng: random.Random,
    num_heads: int,
    num_kv_heads: int,
    block_size: int,
    threads: int,
    max_blocks: int = 9,
) -> tuple[torch.Tensor, torch.Tensor]:
    head_dim = rng.choice([32, 64, 80])
    num_blocks = 64
    lens = [rng.randint(1, max_blocks * block_size) for _ in range(rng.randint(1, 9))]
    prefill = rng.randint(0, 5)  # rows of a first prefill chunk ahead of the decode rows
    k_cache = torch.randn(num_blocks * block_size, num_kv_heads, head_dim)
    v_cache = torch.randn(num_blocks * block_size, num_kv_heads, head_dim)
    tables = [rng.sample(range(num_blocks), -(-n // block_size) + rng.randint(0, 1)) for n in lens]
    num_rows = prefill + len(lens)
    # q as the model has it: a view into a wider qkv row (not contiguous).
    qkv = torch.randn(num_rows, num_heads + 2 * num_kv_heads, head_dim)
    q, k, v = qkv[:, :num_heads], qkv[:, num_heads:-num_kv_heads], qkv[:, -num_kv_heads:]
    lens_np = np.asarray(lens, dtype=np.int64)
    tables_np = padded_tables(tables, lens_np, block_size)
    slots, valid = context_slots(tables_np, lens_np, block_size)
    rows = torch.arange(prefill, num_rows)
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(0, dtype=torch.long),
        prefills=[PrefillSegment(0, prefill, None, None)] if prefill else [],
        decode_rows=rows,
        decode_slots=torch.from_numpy(slots),
        decode_mask=None if valid.all() else torch.from_numpy(valid)[:, None, None, :],
    )
    torch.set_num_threads(threads)
    scale = head_dim**-0.5
    ref = paged_attention(q, k, v, k_cache, v_cache, meta, scale)
    meta.decode_tables, meta.decode_lens = torch.from_numpy(tables_np), torch.from_numpy(lens_np)
    meta.block_size = block_size
    assert decode_kernel.usable(q, k_cache)
    ours = paged_attention(q, k, v, k_cache, v_cache, meta, scale)
    return ours, ref


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (6, 2), (9, 3), (8, 1)])
def test_kernel_matches_gather_and_sdpa(seed: int, num_heads: int, num_kv_heads: int) -> None:
    rng = random.Random(seed)
    threads = torch.get_num_threads()
    try:
        ours, ref = _case(rng, num_heads, num_kv_heads, rng.choice([1, 4, 16]), 1 + seed % 3)
    finally:
        torch.set_num_threads(threads)
    assert (ours - ref).abs().max().item() < 1e-5


def test_long_contexts_split_over_threads_match() -> None:
    """Enough context tokens (over 4K, times the KV heads) that the kernel starts threads."""
    rng = random.Random(99)
    threads = torch.get_num_threads()
    try:
        torch.manual_seed(0)
        ours, ref = _case(rng, 9, 3, 16, 3, max_blocks=60)
    finally:
        torch.set_num_threads(threads)
    assert (ours - ref).abs().max().item() < 1e-5
