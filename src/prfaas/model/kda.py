"""Kimi Delta Attention (KDA) math: the gated delta rule with a per-channel decay.

Pure functions, no parameters. Conventions follow transformers' torch fallbacks in
`models/kimi_linear/modeling_kimi_linear.py` (themselves following FLA's `chunk_kda`):

- Token-major layout. Unbatched `(num_tokens, num_heads, dim)` or batched
  `(batch, num_tokens, num_heads, dim)`; the state is `(num_heads, head_k_dim, head_v_dim)`
  or `(batch, num_heads, head_k_dim, head_v_dim)`, rows indexed by key channel.
- `g` is the decay in log space (`g <= 0`), one value per token, head and key channel.
- q and k are l2-normalised inside (in float32) unless `use_qk_l2norm=False`; then q is
  multiplied by `scale` (default `head_k_dim ** -0.5`).
- All math runs in float32; the state is float32 in and out; the output has q's dtype.

Per head, with `D_t = diag(exp(g_t))` and S of shape (head_k_dim, head_v_dim):

    S_t = (I - beta_t k_t k_t^T) D_t S_{t-1} + beta_t k_t v_t^T,    o_t = S_t^T q_t

This module does not know about layers, projections or caches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Shortcuts that read a decay back to the host to pick a cheaper exact path are taken only
# on a CPU, where the read costs nothing. On an accelerator it would stall the step, so the
# path without read-backs (every level of ``decayed_gram``'s halving, same result) runs
# instead. ``without_read_backs`` runs that path on a CPU too (the sync-counting tests).
_read_backs_on_cpu = True


def _may_read_back(t: Tensor) -> bool:
    return t.device.type == "cpu" and _read_backs_on_cpu


@contextmanager
def without_read_backs() -> Iterator[None]:
    global _read_backs_on_cpu
    saved, _read_backs_on_cpu = _read_backs_on_cpu, False
    try:
        yield
    finally:
        _read_backs_on_cpu = saved


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """`x / sqrt(sum(x^2) + eps)` over the last dim, as FLA computes it (eps inside the root)."""
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def _as_batched(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Tensor | None
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor, bool]:
    """Adds a batch dim if missing; the state becomes float32 (zeros when None).

    Returns (q, k, v, g, beta), the state, and whether a batch dim was added.
    """
    unbatched = q.dim() == 3
    if unbatched:
        q, k, v, g, beta = (x.unsqueeze(0) for x in (q, k, v, g, beta))
    batch, _, num_heads, head_k_dim = k.shape
    if initial_state is None:
        state = torch.zeros(batch, num_heads, head_k_dim, v.shape[-1], device=q.device)
    else:
        state = (initial_state.unsqueeze(0) if unbatched else initial_state).float()
    return (q, k, v, g, beta), state, unbatched


def _float_qk(
    q: Tensor, k: Tensor, scale: float | None, use_qk_l2norm: bool
) -> tuple[Tensor, Tensor]:
    """float32 q and k, l2-normalised (after the cast, as FLA does), q times the scale."""
    q, k = q.float(), k.float()
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    return q * (k.shape[-1] ** -0.5 if scale is None else scale), k


def kda_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    scale: float | None = None,
    *,
    use_qk_l2norm: bool = True,
) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence: the reference, and the decode step.

    q, k: ([batch,] num_tokens, num_heads, head_k_dim); v: (..., head_v_dim)
    g: like k, log-space decay; beta: ([batch,] num_tokens, num_heads)
    initial_state: ([batch,] num_heads, head_k_dim, head_v_dim) or None for zeros.
    Returns o: ([batch,] num_tokens, num_heads, head_v_dim) in q.dtype, and the final state
    (float32, same shape as initial_state).
    """
    out_dtype = q.dtype
    (q, k, v, g, beta), state, unbatched = _as_batched(q, k, v, g, beta, initial_state)
    q, k = _float_qk(q, k, scale, use_qk_l2norm)
    v, beta = v.float(), beta.float()
    decay = g.float().exp()
    outs = []
    for t in range(q.shape[1]):
        # state: (batch, num_heads, head_k_dim, head_v_dim)
        state = state * decay[:, t, :, :, None]
        predicted = (k[:, t, :, None, :] @ state).squeeze(-2)  # (batch, num_heads, head_v_dim)
        delta = (v[:, t] - predicted) * beta[:, t, :, None]
        state = state + k[:, t, :, :, None] * delta[:, :, None, :]
        outs.append((q[:, t, :, None, :] @ state).squeeze(-2))
    if outs:
        o = torch.stack(outs, dim=1)
    else:
        o = v.new_zeros(v.shape)
    o = o.to(out_dtype)
    return (o[0], state[0]) if unbatched else (o, state)


# Decays below e^MIN_LOG_DECAY (~4e-18) are taken as e^MIN_LOG_DECAY: far below the float32
# resolution of the O(1) terms they are added to. It keeps exp() and the matmuls out of the
# subnormal range (products of two such factors are >= e^-80, still normal), where CPUs run
# ~10x slower.
MIN_LOG_DECAY = -40.0


def _exp_decay(log_decay: Tensor) -> Tensor:
    """exp of a log decay (<= 0), floored at e^MIN_LOG_DECAY."""
    return torch.exp(log_decay.clamp(min=MIN_LOG_DECAY))


def _diagonal_blocks(m: Tensor, size: int) -> Tensor:
    """View of the (size, size) blocks on the diagonal of m.

    m: (..., n, n) -> (..., n / size, size, size); block i covers rows and cols
    [i * size, (i + 1) * size). Writes go through to m.
    """
    groups = m.shape[-1] // size
    tiles = m.unflatten(-1, (groups, size)).unflatten(-3, (groups, size))
    return tiles.diagonal(dim1=-4, dim2=-2).movedim(-1, -3)


# A factor exp(+-d) with d <= this many nats stays far inside float32's normal range
# (~e^+-87), so products of such factors with unit-scale vectors neither overflow nor lose
# precision to subnormals.
SAFE_LOG_RANGE = 60.0


def decayed_gram(x: Tensor, y: Tensor, g_cum: Tensor) -> Tensor:
    """Strictly lower `M[a, b] = sum_d x[a, d] y[b, d] exp(g_cum[a, d] - g_cum[b, d])`, b < a.

    x: (..., chunk, dim), may carry extra leading dims that broadcast against y and g_cum;
    y, g_cum: (..., chunk, dim), chunk a power of two; g_cum non-increasing along chunk
    (a cumulative sum of log decays). Returns (..., chunk, chunk), zero on and above the
    diagonal.

    The factorisation `(x e^(g - g_ref)) (y e^(g_ref - g))^T` over a block of rows is one
    matmul, but overflows once the block decays by more than ~88 nats. So, by recursive
    halving: while some (2s)-row group decays by more than SAFE_LOG_RANGE, fill only the
    lower-left (s, s) block of every group, around the reference r = last row of its first
    half (both factors exp(g_a - g_r), exp(g_r - g_b) are <= 1), and halve s. Once every
    group is within range, each whole (2s, 2s) diagonal block is one factorised matmul around
    its first row, masked to the strict lower triangle. Blocks of all levels tile the strict
    lower triangle exactly; mild decays take a single matmul, extreme ones log2(chunk) levels.
    """
    chunk = x.shape[-2]
    assert chunk & (chunk - 1) == 0, "chunk size must be a power of two"
    m = x.new_zeros(*torch.broadcast_shapes(x.shape, y.shape)[:-1], chunk)
    s = chunk // 2
    may_read_back = _may_read_back(x)
    while s >= 1:
        groups = chunk // (2 * s)
        xs, ys, gs = (t.unflatten(-2, (groups, 2 * s)) for t in (x, y, g_cum))
        group_decay = gs[..., 0, :] - gs[..., -1, :]  # (..., groups, dim), >= 0
        # Without the read-back, the halving goes down to s = 1 (blocks of one row, whose
        # strict lower triangle is empty): the same blocks, each exact, more matmuls.
        if may_read_back and float(group_decay.detach().max()) <= SAFE_LOG_RANGE:
            ref = gs[..., :1, :]  # (..., groups, 1, dim): first row of each group
            decay = torch.exp(gs - ref)  # in [e^-SAFE_LOG_RANGE, 1]: its inverse is finite
            xa, yb = xs * decay, ys / decay
            strict = torch.ones(2 * s, 2 * s, dtype=torch.bool, device=x.device).tril(-1)
            block = (xa @ yb.transpose(-1, -2)) * strict
            _diagonal_blocks(m, 2 * s).copy_(block)
            return m
        ref = gs[..., s - 1 : s, :]  # (..., groups, 1, dim)
        xa = xs[..., s:, :] * _exp_decay(gs[..., s:, :] - ref)
        yb = ys[..., :s, :] * _exp_decay(ref - gs[..., :s, :])
        # (..., groups, 2s, 2s) diagonal blocks; rows s.. and cols ..s are the lower-left block.
        _diagonal_blocks(m, 2 * s)[..., s:, :s] = xa @ yb.transpose(-1, -2)
        s //= 2
    return m


def unit_lower_inverse(lower: Tensor) -> Tensor:
    """`(I + lower)^-1` for a strictly lower-triangular (..., n, n) matrix, n a power of two.

    Blocked forward substitution by doubling: once the diagonal (s, s) blocks A^-1 and D^-1 of
    each (2s, 2s) block [[A, 0], [C, D]] are inverted, its inverse is
    [[A^-1, 0], [-D^-1 C A^-1, D^-1]]. Starts from s = 1, where the blocks are 1.
    """
    n = lower.shape[-1]
    inv = torch.zeros_like(lower, memory_format=torch.contiguous_format)
    inv.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    s = 1
    while s < n:
        blocks = _diagonal_blocks(inv, 2 * s)
        c = _diagonal_blocks(lower, 2 * s)[..., s:, :s]
        blocks[..., s:, :s] = -(blocks[..., s:, s:] @ c @ blocks[..., :s, :s])
        s *= 2
    return inv


IntraChunk = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def _intra_chunk(q: Tensor, k: Tensor, g_cum: Tensor) -> IntraChunk:
    """Decayed products within each chunk.

    q, k, g_cum: (..., chunk, head_k_dim), g_cum the decay from the chunk start up to and
    including each row. Returns
      kk: (..., chunk, chunk), kk[a, b] = <k_a, k_b> decayed from b to a, b < a (else 0);
      qk: likewise for <q_a, k_b>, b <= a;
      q_in, k_in: q, k times exp(g_cum) (decayed from the chunk start);
      k_out: k times exp(g_last - g_cum) (decayed to the chunk end).
    Each (chunk, head) decaying by at most SAFE_LOG_RANGE takes one factorised matmul, the
    others the exact recursive halving of `decayed_gram`.
    """
    if not _may_read_back(q):
        return _intra_halving(q, k, g_cum)
    in_range = -g_cum[..., -1, :].amin(dim=-1) <= SAFE_LOG_RANGE  # (...): per chunk and head
    if bool(in_range.all()):
        return _intra_factored(q, k, g_cum)
    if not bool(in_range.any()):
        return _intra_halving(q, k, g_cum)
    fast = _intra_factored(q[in_range], k[in_range], g_cum[in_range])
    slow = _intra_halving(q[~in_range], k[~in_range], g_cum[~in_range])
    merged = []
    for f, s in zip(fast, slow, strict=True):
        out = f.new_empty(*in_range.shape, *f.shape[1:])
        out[in_range], out[~in_range] = f, s
        merged.append(out)
    kk, qk, q_in, k_in, k_out = merged
    return kk, qk, q_in, k_in, k_out


def _intra_factored(q: Tensor, k: Tensor, g_cum: Tensor) -> IntraChunk:
    """`_intra_chunk` for chunks within SAFE_LOG_RANGE: all pairs around the chunk start."""
    chunk = k.shape[-2]
    decay_in = torch.exp(g_cum)  # in [e^-SAFE_LOG_RANGE, 1], exact
    q_in, k_in = q * decay_in, k * decay_in
    k_inv = k / decay_in  # k exp(-g_cum), at most e^SAFE_LOG_RANGE |k|
    grams = torch.cat([k_in, q_in], dim=-2) @ k_inv.transpose(-1, -2)  # (..., 2 chunk, chunk)
    kk, qk = grams[..., :chunk, :].tril(-1), grams[..., chunk:, :].tril()
    return kk, qk, q_in, k_in, k_inv * decay_in[..., -1:, :]


def _intra_halving(q: Tensor, k: Tensor, g_cum: Tensor) -> IntraChunk:
    """`_intra_chunk` for any decay, by `decayed_gram`'s recursive halving."""
    decay_in = _exp_decay(g_cum)
    q_in, k_in = q * decay_in, k * decay_in
    grams = decayed_gram(torch.stack([k, q]), k, g_cum)
    kk, qk = grams[0], grams[1] + torch.diag_embed((q * k).sum(-1))
    return kk, qk, q_in, k_in, k * _exp_decay(g_cum[..., -1:, :] - g_cum)


def _scan_chunks(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """Runs whole chunks; every input is float32 and chunk-major.

    q, k, g: (num_chunks, batch, num_heads, chunk, head_k_dim); v: (..., head_v_dim);
    beta: (num_chunks, batch, num_heads, chunk); state: (batch, num_heads, head_k_dim, head_v_dim).
    Returns o like v and the state after the last chunk.
    """
    g_cum = g.cumsum(dim=-2)  # decay from the chunk start up to and including each row
    kk, qk, q_in, k_in, k_out = _intra_chunk(q, k, g_cum)
    # WY / UT transform: the per-row residuals delta = beta * (v - k^T S_before_row) solve
    # (I + diag(beta) kk) delta = beta v - (beta k_in) S0, S0 the chunk's initial state.
    # With T = (I + diag(beta) kk)^-1: delta = u - w S0, u = T beta v, w = T beta k_in.
    t_inv = unit_lower_inverse(kk * beta[..., None])
    u = t_inv @ (v * beta[..., None])
    w = t_inv @ (k_in * beta[..., None])
    # The scan runs on (batch * num_heads) as one bmm batch dim.
    num_chunks, batch, num_heads, chunk, head_k_dim = k.shape
    head_v_dim = v.shape[-1]
    bh = batch * num_heads
    reads = torch.cat([w, q_in], dim=-2).view(num_chunks, bh, 2 * chunk, head_k_dim)
    u, qk = u.view(num_chunks, bh, chunk, head_v_dim), qk.view(num_chunks, bh, chunk, chunk)
    k_out = k_out.transpose(-1, -2).reshape(num_chunks, bh, head_k_dim, chunk)
    end_decay = _exp_decay(g_cum[..., -1, :]).view(num_chunks, bh, head_k_dim, 1)
    s = state.reshape(bh, head_k_dim, head_v_dim)
    outs = []
    for n in range(num_chunks):
        read = torch.bmm(reads[n], s)  # (bh, 2 chunk, head_v_dim): w S0 and q_in S0
        delta = u[n] - read[:, :chunk]
        outs.append(torch.baddbmm(read[:, chunk:], qk[n], delta))
        s = torch.baddbmm(s * end_decay[n], k_out[n], delta)
    return torch.stack(outs).view(v.shape), s.view(state.shape)


def _to_chunks(x: Tensor, chunk_size: int) -> Tensor:
    """(batch, num_tokens, num_heads, dim) -> float32 (num_chunks, batch, num_heads, chunk, dim).

    The last chunk is zero-padded; zero g and beta make padded rows leave the state unchanged.
    """
    batch, num_tokens, num_heads, dim = x.shape
    pad = -num_tokens % chunk_size
    x = F.pad(x.float(), (0, 0, 0, 0, 0, pad)) if pad else x.float()
    x = x.reshape(batch, (num_tokens + pad) // chunk_size, chunk_size, num_heads, dim)
    return x.permute(1, 0, 3, 2, 4).contiguous()


def kda_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
    *,
    use_qk_l2norm: bool = True,
    step_elems: int = 1 << 19,
) -> tuple[Tensor, Tensor]:
    """Chunked KDA (WY / UT transform), equal to `kda_recurrent` up to float32 rounding.

    Same shapes and conventions as `kda_recurrent`; chunk_size a power of two (the intra-chunk
    products and the triangular inverse halve blocks). Any length: the tail is padded with
    g = 0, beta = 0 tokens, which leave the state unchanged. Intra-chunk work is done for
    as many chunks at once as keep one (chunks, batch, heads, chunk, dim) tensor within
    `step_elems` elements: bounded memory for long prompts, and on CPU, small tensors that
    the allocator reuses (large fresh allocations page-fault on every call).
    """
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two, not {chunk_size}")
    out_dtype = q.dtype
    (q, k, v, g, beta), state, unbatched = _as_batched(q, k, v, g, beta, initial_state)
    batch, num_tokens, num_heads, _ = k.shape
    chunk_elems = batch * num_heads * chunk_size * max(k.shape[-1], v.shape[-1])
    step_tokens = chunk_size * max(1, step_elems // chunk_elems)
    o = v.new_empty(v.shape, dtype=out_dtype)
    for start in range(0, num_tokens, step_tokens):
        step = slice(start, min(start + step_tokens, num_tokens))
        qs, ks = _float_qk(q[:, step], k[:, step], scale, use_qk_l2norm)
        num_step = qs.shape[1]
        qc, kc, vc, gc = (_to_chunks(x, chunk_size) for x in (qs, ks, v[:, step], g[:, step]))
        bc = _to_chunks(beta[:, step, :, None], chunk_size)[..., 0]
        o_step, state = _scan_chunks(qc, kc, vc, gc, bc, state)
        # (num_chunks, batch, num_heads, chunk, head_v_dim) -> (batch, num_step, ...)
        o_step = o_step.permute(1, 0, 3, 2, 4).reshape(batch, -1, num_heads, v.shape[-1])
        o[:, step] = o_step[:, :num_step]
    return (o[0], state[0]) if unbatched else (o, state)


def causal_conv1d(
    x: Tensor, weight: Tensor, bias: Tensor | None, conv_state: Tensor | None, silu: bool = True
) -> tuple[Tensor, Tensor]:
    """Short causal depthwise convolution continuing from the previous inputs.

    x: ([batch,] num_tokens, channels); weight: (channels, kernel); bias: (channels,) or None;
    conv_state: ([batch,] kernel - 1, channels), the inputs just before x (zeros when None,
    i.e. at the start of a sequence). Returns y like x (SiLU applied when `silu`) and the new
    state: the last kernel - 1 rows of cat(conv_state, x), in x's dtype.
    Output t is `bias + sum_j weight[:, j] * window[t + j]` with window = cat(conv_state, x),
    accumulated in float32 and rounded to x's dtype before the SiLU (as F.conv1d then SiLU).
    """
    kernel = weight.shape[-1]
    if conv_state is None:
        conv_state = x.new_zeros(*x.shape[:-2], kernel - 1, x.shape[-1])
    window = torch.cat([conv_state.to(x.dtype), x], dim=-2)  # (..., kernel - 1 + num_tokens, ch)
    num_tokens = x.shape[-2]
    window32, w = window.float(), weight.float()
    y = window32[..., 0:num_tokens, :] * w[:, 0]
    for j in range(1, kernel):
        y = y + window32[..., j : j + num_tokens, :] * w[:, j]
    if bias is not None:
        y = y + bias.float()
    y = y.to(x.dtype)
    if silu:
        y = F.silu(y)
    return y, window[..., window.shape[-2] - (kernel - 1) :, :]
