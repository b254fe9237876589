"""Paged attention over flat KV caches, in plain PyTorch (the reference attention backend).

Layout: each full-attention layer has a K and a V cache of shape
``(num_blocks * block_size, num_kv_heads, head_dim)``; token ``j`` of a request lives at slot
``block_table[j // block_size] * block_size + j % block_size``.

One step's tokens from every scheduled request are flattened into ``T`` rows. A request's
rows are either a *prefill* chunk (any number of query tokens, attending to its whole
context) or a *decode* token (one query token). The metadata below is built once per step
by the runner and shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PrefillSegment:
    """One request's prefill chunk: query rows ``[q_start, q_end)`` of the step."""

    q_start: int
    q_end: int
    # Slots of the request's whole context (cached prefix + this chunk), (ctx_len,); None
    # when the chunk is the request's first, in which case the chunk's own K/V suffice.
    context_slots: torch.Tensor | None
    # (num_query, ctx_len) bool, True where a query may attend; None when context_slots is.
    mask: torch.Tensor | None


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (T,) int64: the slot each new token's K/V is written to
    prefills: list[PrefillSegment]
    decode_rows: torch.Tensor | None  # (D,) rows of the step that are decode tokens
    decode_slots: torch.Tensor | None  # (D, max_ctx) int64 context slots, padded with 0
    decode_mask: torch.Tensor | None  # (D, 1, 1, max_ctx) bool, False on padding


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store the step's new K/V rows (T, num_kv_heads, head_dim) in their slots."""
    k_cache.index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """q: (T, num_heads, head_dim); k, v: (T, num_kv_heads, head_dim), already in the cache.

    Returns (T, num_heads, head_dim).
    """
    out = torch.empty_like(q)
    for seg in meta.prefills:
        qs = q[seg.q_start : seg.q_end].transpose(0, 1)  # (H, n, d)
        if seg.context_slots is None:
            ks = k[seg.q_start : seg.q_end].transpose(0, 1)
            vs = v[seg.q_start : seg.q_end].transpose(0, 1)
            o = F.scaled_dot_product_attention(
                qs, ks.to(q.dtype), vs.to(q.dtype), is_causal=True, scale=scale, enable_gqa=True
            )
        else:
            ks = k_cache[seg.context_slots].transpose(0, 1).to(q.dtype)  # (Hkv, ctx, d)
            vs = v_cache[seg.context_slots].transpose(0, 1).to(q.dtype)
            o = F.scaled_dot_product_attention(
                qs, ks, vs, attn_mask=seg.mask, scale=scale, enable_gqa=True
            )
        out[seg.q_start : seg.q_end] = o.transpose(0, 1)
    if meta.decode_rows is not None:
        assert meta.decode_slots is not None and meta.decode_mask is not None
        qd = q[meta.decode_rows].unsqueeze(2)  # (D, H, 1, d)
        kd = k_cache[meta.decode_slots].transpose(1, 2).to(q.dtype)  # (D, Hkv, ctx, d)
        vd = v_cache[meta.decode_slots].transpose(1, 2).to(q.dtype)
        od = F.scaled_dot_product_attention(
            qd, kd, vd, attn_mask=meta.decode_mask, scale=scale, enable_gqa=True
        )
        out[meta.decode_rows] = od.squeeze(2)
    return out
