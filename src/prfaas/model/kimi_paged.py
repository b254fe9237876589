"""Kimi Linear attention over the engine's caches: paged MLA latent rows and KDA state slots.

A step's tokens from every request are flattened into ``T`` rows, as for the Llama family.
MLA layers find each request's context through ``AttentionMetadata`` (slots of a flat
``(num_blocks * block_size, latent_dim)`` cache); KDA layers find each request's state through
``LinearMetadata`` (rows of per-slot state tensors). The layers' parameters and their
single-sequence math live in ``kimi_layers``; this module only gathers and scatters.

Prefill chunks run the conv and the chunked KDA per request; decode rows of all requests run
as one batched recurrence step over their stacked states.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from prfaas.model.attention import AttentionMetadata
from prfaas.model.kda import causal_conv1d, kda_chunked, kda_recurrent
from prfaas.model.kimi_layers import KimiDeltaAttention, KimiMLAttention

Tensor = torch.Tensor


@dataclass
class KdaCache:
    """Per-slot states of one KDA layer; slot ids come from ``LinearStateManager``."""

    recurrent: Tensor  # (num_slots, num_heads, head_k_dim, head_v_dim) float32
    conv: Tensor  # (num_slots, conv_kernel - 1, 3 * num_heads * head_dim): [q | k | v] inputs


@dataclass
class LinearSegment:
    """One request's prefill chunk: rows ``[q_start, q_end)``, its live state ``slot``, and
    ``snapshots`` as (rows into the chunk, slot) where the state is copied out mid-chunk."""

    q_start: int
    q_end: int
    slot: int
    snapshots: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class LinearMetadata:
    prefills: list[LinearSegment]
    decode_rows: Tensor | None  # (D,) rows of the step that are decode tokens
    decode_slots: Tensor | None  # (D,) their live state slots
    # (live slot, snapshot slot): copied after the layer ran (states at the end of a chunk)
    copies_after: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class HybridMetadata:
    attn: AttentionMetadata  # for the MLA layers
    linear: LinearMetadata  # for the KDA layers


def kda_paged(
    attn: KimiDeltaAttention, hidden: Tensor, meta: LinearMetadata, cache: KdaCache
) -> Tensor:
    """hidden: (T, hidden_size) -> (T, hidden_size); reads and advances the slots' states."""
    num_tokens = hidden.shape[0]
    heads = (attn.num_heads, attn.head_dim)
    # Depthwise conv: one weight row per channel of [q | k | v], (3 * qkv_dim, kernel).
    weight = attn.conv1d.weight[:, 0, :]
    qkv = torch.cat([attn.q_proj(hidden), attn.k_proj(hidden), attn.v_proj(hidden)], dim=-1)
    g = attn.forget_gate(hidden)  # (T, H, d) float32
    beta = torch.sigmoid(attn.b_proj(hidden))  # (T, H)
    o = hidden.new_empty(num_tokens, *heads)
    for seg in meta.prefills:
        rows = slice(seg.q_start, seg.q_end)
        x, conv_state = causal_conv1d(qkv[rows], weight, None, cache.conv[seg.slot])
        q, k, v = (t.unflatten(-1, heads) for t in x.chunk(3, dim=-1))  # (n, H, d) each
        # Inputs just before row i of the chunk: window[i : i + kernel - 1].
        window = torch.cat([cache.conv[seg.slot], qkv[rows]])
        state = cache.recurrent[seg.slot]
        done = 0
        for upto, snapshot in [*seg.snapshots, (seg.q_end - seg.q_start, -1)]:
            if upto > done:
                part = slice(done, upto)
                kda = kda_recurrent if upto - done == 1 else kda_chunked
                o[seg.q_start + done : seg.q_start + upto], state = kda(
                    q[part], k[part], v[part], g[rows][part], beta[rows][part], state
                )
                done = upto
            if snapshot >= 0:
                cache.recurrent[snapshot] = state
                cache.conv[snapshot] = window[upto : upto + window.shape[0] - x.shape[0]]
        cache.recurrent[seg.slot] = state
        cache.conv[seg.slot] = conv_state
    if meta.decode_rows is not None:
        assert meta.decode_slots is not None
        rows_d, slots = meta.decode_rows, meta.decode_slots
        # One token per request: (D, 1, ...) batched conv and recurrence over stacked states.
        x, conv_state = causal_conv1d(
            qkv.index_select(0, rows_d)[:, None], weight, None, cache.conv.index_select(0, slots)
        )
        q, k, v = (t.unflatten(-1, heads) for t in x.chunk(3, dim=-1))  # (D, 1, H, d) each
        o_d, state = kda_recurrent(
            q,
            k,
            v,
            g.index_select(0, rows_d)[:, None],
            beta.index_select(0, rows_d)[:, None],
            cache.recurrent.index_select(0, slots),
        )
        cache.recurrent.index_copy_(0, slots, state)
        cache.conv.index_copy_(0, slots, conv_state)
        o.index_copy_(0, rows_d, o_d[:, 0])
    for live, snapshot in meta.copies_after:
        cache.recurrent[snapshot] = cache.recurrent[live]
        cache.conv[snapshot] = cache.conv[live]
    gate = attn.g_b_proj(attn.g_a_proj(hidden)).unflatten(-1, heads)
    return attn.o_proj(attn.o_norm(o, gate).flatten(1))


def mla_paged(
    attn: KimiMLAttention, hidden: Tensor, meta: AttentionMetadata, cache: Tensor
) -> Tensor:
    """hidden: (T, hidden_size) -> (T, hidden_size); cache: (num_slots, latent_dim).

    Writes the step's latent rows into their slots first, then attends per prefill chunk
    (over the chunk, or its gathered context) and for all decode rows at once.
    """
    num_tokens = hidden.shape[0]
    q = attn._query(hidden).view(num_tokens, attn.num_heads, attn.qk_head_dim)
    latent = attn.latent(hidden)  # (T, latent_dim)
    cache.index_copy_(0, meta.slot_mapping, latent.to(cache.dtype))
    o = hidden.new_empty(num_tokens, attn.num_heads, attn.v_head_dim)
    for seg in meta.prefills:
        n = seg.q_end - seg.q_start
        if seg.context_slots is None:
            rows = latent[seg.q_start : seg.q_end]
            visible = torch.ones(n, n, dtype=torch.bool, device=hidden.device).tril()
        else:
            assert seg.mask is not None
            rows, visible = cache.index_select(0, seg.context_slots).to(hidden.dtype), seg.mask
        qs = q[seg.q_start : seg.q_end]
        if attn.absorbed_is_cheaper(n, rows.shape[0]):
            o[seg.q_start : seg.q_end] = attn._attend_absorbed(qs, rows, visible)
        else:
            o[seg.q_start : seg.q_end] = attn._attend_expanded(qs, rows, visible)
    if meta.decode_rows is not None:
        assert meta.decode_slots is not None
        o.index_copy_(0, meta.decode_rows, _decode_absorbed(attn, q, cache, meta))
    return attn.o_proj(o.flatten(1))


def _decode_absorbed(
    attn: KimiMLAttention, q: Tensor, cache: Tensor, meta: AttentionMetadata
) -> Tensor:
    """All decode rows at once, in latent space. Returns (D, num_heads, v_head_dim).

    Each request's heads are folded into the query axis, (D, 1, H, latent): the rows serve
    every head as keys (and their first kv_lora_rank values as values), so none is copied.
    """
    assert meta.decode_rows is not None and meta.decode_slots is not None
    rank, nope = attn.kv_lora_rank, attn.qk_nope_head_dim
    w_kv = attn.kv_b_proj.weight.view(attn.num_heads, nope + attn.v_head_dim, rank)
    w_uk, w_uv = w_kv.split([nope, attn.v_head_dim], dim=1)  # (H, dim, rank)
    q_nope, q_rope = q.index_select(0, meta.decode_rows).split([nope, attn.qk_rope_head_dim], -1)
    q_latent = torch.cat([torch.einsum("dhn,hnr->dhr", q_nope, w_uk), q_rope], dim=-1)
    slots = meta.decode_slots
    rows = cache.index_select(0, slots.reshape(-1)).view(*slots.shape, -1).to(q.dtype)
    keys = rows[:, None]  # (D, 1, ctx, latent)
    o_latent = F.scaled_dot_product_attention(
        q_latent[:, None], keys, keys[..., :rank], attn_mask=meta.decode_mask, scale=attn.scaling
    )  # (D, 1, H, rank)
    return torch.einsum("dhr,hvr->dhv", o_latent[:, 0], w_uv)
