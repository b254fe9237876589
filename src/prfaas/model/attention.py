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

from prfaas.model import decode_kernel, prefill_kernel


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
class DecodeGroup:
    """Decode rows of similar context length, attended to together (less padding)."""

    rows: torch.Tensor  # (G,) rows of the step
    slots: torch.Tensor  # (G, group_max_ctx) context slots, padded with 0
    mask: torch.Tensor | None  # (G, 1, 1, group_max_ctx), False on padding; None if none


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (T,) int64: the slot each new token's K/V is written to
    prefills: list[PrefillSegment]
    decode_rows: torch.Tensor | None  # (D,) rows of the step that are decode tokens
    decode_slots: torch.Tensor | None  # (D, max_ctx) int64 context slots, padded with 0
    # (D, 1, 1, max_ctx) bool, False on padding; None when no row is padded.
    decode_mask: torch.Tensor | None
    # The same decode rows split by context length (for attention over the flat KV cache).
    decode_groups: list[DecodeGroup] | None = None
    # For the in-place kernel (``decode_kernel``): (D, width) int64 block ids of each decode
    # row, padded with 0; (D,) int64 context lengths. CPU tensors.
    decode_tables: torch.Tensor | None = None
    decode_lens: torch.Tensor | None = None
    block_size: int = 0  # tokens per block (for both kernels)
    # For the prefill kernel (``prefill_kernel``), one row per entry of ``prefills``: (S, 3)
    # int64 first row, end row and position of the first row; (S, width) int64 block ids
    # covering each segment's context, padded with 0. CPU tensors.
    prefill_spans: torch.Tensor | None = None
    prefill_tables: torch.Tensor | None = None


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


def _gather(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """cache[slots] for slots (D, ctx) -> (D, ctx, Hkv, d). ``index_select`` on the flat
    slot axis: on CPU it is ~100x faster than advanced indexing for these shapes."""
    return cache.index_select(0, slots.reshape(-1)).view(*slots.shape, *cache.shape[1:])


def _expand_kv(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(..., Hkv, n, d) -> (..., num_heads, n, d): repeat each KV head for its query group.

    Done by hand rather than with SDPA's ``enable_gqa`` because with it PyTorch's CPU backend
    falls back to the math kernel, which materializes the (n, n) score matrix.
    """
    num_kv_heads = x.shape[-3]
    if num_kv_heads == num_heads:
        return x
    return x.repeat_interleave(num_heads // num_kv_heads, dim=-3)


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
    num_heads = q.shape[1]
    out = torch.empty_like(q)
    if meta.prefill_tables is not None and prefill_kernel.usable(q, k_cache):
        assert meta.prefill_spans is not None
        prefill_kernel.prefill_attention(
            q,
            k_cache,
            v_cache,
            out,
            meta.prefill_spans,
            meta.prefill_tables,
            meta.block_size,
            scale,
        )
    else:
        for seg in meta.prefills:
            _prefill_sdpa(q, k, v, k_cache, v_cache, seg, scale, out)
    if meta.decode_tables is not None and decode_kernel.usable(q, k_cache):
        assert meta.decode_rows is not None and meta.decode_lens is not None
        decode_kernel.decode_attention(
            q,
            k_cache,
            v_cache,
            out,
            meta.decode_rows,
            meta.decode_tables,
            meta.decode_lens,
            meta.block_size,
            scale,
        )
    elif meta.decode_rows is not None:
        assert meta.decode_slots is not None
        # One query per request: fold each KV head's query group into the query axis,
        # (D, Hkv, group, d), so no KV head is copied. Exact, since decode has no causal
        # structure among the group's queries.
        groups = meta.decode_groups or [
            DecodeGroup(meta.decode_rows, meta.decode_slots, meta.decode_mask)
        ]
        for g in groups:
            num_decode, head_dim = g.rows.shape[0], q.shape[2]
            num_kv_heads = k_cache.shape[1]
            qd = q.index_select(0, g.rows).view(num_decode, num_kv_heads, -1, head_dim)
            kd = _gather(k_cache, g.slots).transpose(1, 2).to(q.dtype)  # (G, Hkv, ctx, d)
            vd = _gather(v_cache, g.slots).transpose(1, 2).to(q.dtype)
            od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=g.mask, scale=scale)
            out.index_copy_(0, g.rows, od.reshape(num_decode, num_heads, head_dim))
    return out


def _prefill_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seg: PrefillSegment,
    scale: float,
    out: torch.Tensor,
) -> None:
    """The reference prefill: the segment's rows of ``out`` by SDPA over its context (the
    chunk's own K/V for a first chunk, else gathered from the cache), K/V heads expanded."""
    num_heads = q.shape[1]
    qs = q[seg.q_start : seg.q_end].transpose(0, 1).unsqueeze(0)  # (1, H, n, d)
    if seg.context_slots is None:
        ks = k[seg.q_start : seg.q_end]
        vs = v[seg.q_start : seg.q_end]
    else:
        ks = k_cache.index_select(0, seg.context_slots)  # (ctx, Hkv, d)
        vs = v_cache.index_select(0, seg.context_slots)
    ks = _expand_kv(ks.transpose(0, 1).to(q.dtype), num_heads).unsqueeze(0)
    vs = _expand_kv(vs.transpose(0, 1).to(q.dtype), num_heads).unsqueeze(0)
    if seg.mask is None:
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
    else:
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=seg.mask, scale=scale)
    out[seg.q_start : seg.q_end] = o[0].transpose(0, 1)
