"""Kimi Linear attention layers with explicit per-sequence state.

Parameter names equal those of transformers' `KimiLinearDeltaAttention` and
`KimiLinearAttention`, so `layer.load_state_dict(hf_layer.self_attn.state_dict())` works.

The layers see one sequence and no cache: the caller passes the state in and stores the
state that comes back. KDA returns a new `KdaState` (the old one is never modified, so a
snapshot may alias it). MLA returns the latent rows it produced; the caller keeps them
(in paged blocks) and passes the gathered past rows to the next call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prfaas.model.kda import causal_conv1d, kda_chunked, kda_recurrent
from prfaas.model.kimi_config import KimiConfig

Tensor = torch.Tensor


class KimiRMSNorm(nn.Module):
    """RMS norm in float32, weight applied after casting back (transformers' KimiLinearRMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x32.to(x.dtype)


class KimiGatedRMSNorm(nn.Module):
    """`rmsnorm(x) * weight * sigmoid(gate)`, all in float32, per head (KimiLinearRMSNormGated)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (self.weight.float() * x32 * torch.sigmoid(gate.float())).to(x.dtype)


@dataclass(frozen=True)
class KdaState:
    """Everything a KDA layer carries from one call to the next, for one sequence.

    recurrent: (num_heads, head_k_dim, head_v_dim) float32, rows indexed by key channel.
    q_conv, k_conv, v_conv: (conv_kernel - 1, num_heads * head_dim), the last projected
    inputs (before the short conv) of q, k and v, in the model dtype; zeros at sequence start.
    Valid only at the exact token count it was produced at.
    """

    recurrent: Tensor
    q_conv: Tensor
    k_conv: Tensor
    v_conv: Tensor


class KimiForgetGate(nn.Module):
    """Per-channel log decay `g = -exp(A_log) * softplus(f_b(f_a(x)) + dt_bias)` (<= 0)."""

    def __init__(self, config: KimiConfig) -> None:
        super().__init__()
        self.num_heads = config.linear_num_heads
        self.head_dim = config.linear_head_dim
        qkv_dim = self.num_heads * self.head_dim
        self.f_a_proj = nn.Linear(config.hidden_size, self.head_dim, bias=False)
        self.f_b_proj = nn.Linear(self.head_dim, qkv_dim, bias=False)
        self.dt_bias = nn.Parameter(torch.zeros(qkv_dim))
        self.A_log = nn.Parameter(torch.zeros(1, 1, self.num_heads, 1))

    def forward(self, hidden: Tensor) -> Tensor:
        # hidden: (num_tokens, hidden_size) -> g: (num_tokens, num_heads, head_dim) float32
        x = self.f_b_proj(self.f_a_proj(hidden)).float() + self.dt_bias.float()
        x = x.view(hidden.shape[0], self.num_heads, self.head_dim)
        # log(1 + e^x) with the same cut-off (and rounding) as transformers
        softplus = torch.where(x > 20.0, x, torch.log(1.0 + torch.exp(x)))
        return -self.A_log.float()[0].exp() * softplus


class KimiDeltaAttention(nn.Module):
    """KDA layer: short conv on q/k/v, channel-wise gated delta rule, gated output norm.

    Prefill (more than one token) uses the chunked form, decode the recurrence; both continue
    from `state` exactly.
    """

    def __init__(self, config: KimiConfig) -> None:
        super().__init__()
        self.num_heads = config.linear_num_heads
        self.head_dim = config.linear_head_dim
        self.qkv_dim = self.num_heads * self.head_dim
        self.conv_kernel = config.linear_conv_kernel_dim
        if config.hidden_act != "silu":
            raise ValueError(f"KDA short conv supports silu only, not {config.hidden_act}")
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.qkv_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.qkv_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.qkv_dim, bias=False)
        # One depthwise conv over [q | k | v] channels, weight (3 * qkv_dim, 1, kernel).
        conv_dim = 3 * self.qkv_dim
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, self.conv_kernel, groups=conv_dim, bias=False)
        self.forget_gate = KimiForgetGate(config)
        self.b_proj = nn.Linear(hidden, self.num_heads, bias=False)
        self.g_a_proj = nn.Linear(hidden, self.head_dim, bias=False)
        self.g_b_proj = nn.Linear(self.head_dim, self.qkv_dim, bias=False)
        self.o_norm = KimiGatedRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.o_proj = nn.Linear(self.qkv_dim, hidden, bias=False)

    def empty_state(self, dtype: torch.dtype, device: torch.device | None = None) -> KdaState:
        """The state at sequence start: zeros."""
        conv = torch.zeros(self.conv_kernel - 1, self.qkv_dim, dtype=dtype, device=device)
        recurrent = torch.zeros(
            self.num_heads, self.head_dim, self.head_dim, dtype=torch.float32, device=device
        )
        return KdaState(recurrent, conv, conv.clone(), conv.clone())

    def forward(self, hidden: Tensor, state: KdaState | None = None) -> tuple[Tensor, KdaState]:
        # hidden: (num_tokens, hidden_size) -> out: (num_tokens, hidden_size)
        num_tokens = hidden.shape[0]
        if state is None:
            state = self.empty_state(hidden.dtype, hidden.device)
        heads = (num_tokens, self.num_heads, self.head_dim)
        # conv weight rows [0, qkv), [qkv, 2 qkv), [2 qkv, 3 qkv) act on q, k, v
        w_q, w_k, w_v = self.conv1d.weight[:, 0, :].split(self.qkv_dim)
        q, q_conv = causal_conv1d(self.q_proj(hidden), w_q, None, state.q_conv)
        k, k_conv = causal_conv1d(self.k_proj(hidden), w_k, None, state.k_conv)
        v, v_conv = causal_conv1d(self.v_proj(hidden), w_v, None, state.v_conv)
        g = self.forget_gate(hidden)
        beta = torch.sigmoid(self.b_proj(hidden))  # (num_tokens, num_heads), model dtype as HF
        kda = kda_recurrent if num_tokens == 1 else kda_chunked
        o, recurrent = kda(q.view(heads), k.view(heads), v.view(heads), g, beta, state.recurrent)
        gate = self.g_b_proj(self.g_a_proj(hidden)).view(heads)
        out = self.o_proj(self.o_norm(o, gate).reshape(num_tokens, self.qkv_dim))
        return out, KdaState(recurrent, q_conv, k_conv, v_conv)


class KimiMLAttention(nn.Module):
    """MLA layer without positional encoding (Kimi Linear's full-attention layers).

    Per token the layer produces one latent row `[rmsnorm(c_kv) | k_shared]` of
    `kv_lora_rank + qk_rope_head_dim` values, the only thing to cache (transformers caches
    the same two parts). Per head, k = [W_uk c_kv | k_shared] and v = W_uv c_kv, with
    scale (qk_nope_head_dim + qk_rope_head_dim)^-0.5; the `rope` part is a plain projection
    shared by all heads, no rotation is applied. Attention runs either on keys and values
    expanded from the rows, or in latent space with W_uk / W_uv absorbed into q and the
    output, whichever costs fewer multiply-adds for the call's shape.
    """

    def __init__(self, config: KimiConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.q_lora_rank = config.q_lora_rank
        self.kv_lora_rank = config.kv_lora_rank
        self.qk_nope_head_dim = config.qk_nope_head_dim
        self.qk_rope_head_dim = config.qk_rope_head_dim
        self.qk_head_dim = config.qk_head_dim
        self.v_head_dim = config.v_head_dim
        self.scaling = self.qk_head_dim**-0.5
        hidden, bias = config.hidden_size, config.attention_bias
        q_dim = self.num_heads * self.qk_head_dim
        self.q_proj: nn.Linear | None = None
        self.q_a_proj: nn.Linear | None = None
        self.q_a_layernorm: KimiRMSNorm | None = None
        self.q_b_proj: nn.Linear | None = None
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden, q_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden, config.q_lora_rank, bias=bias)
            self.q_a_layernorm = KimiRMSNorm(config.q_lora_rank)
            self.q_b_proj = nn.Linear(config.q_lora_rank, q_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, config.latent_dim, bias=bias)
        self.kv_a_layernorm = KimiRMSNorm(config.kv_lora_rank)
        self.kv_b_proj = nn.Linear(
            config.kv_lora_rank,
            self.num_heads * (self.qk_nope_head_dim + self.v_head_dim),
            bias=False,
        )
        self.o_proj = nn.Linear(self.num_heads * self.v_head_dim, hidden, bias=bias)

    def latent(self, hidden: Tensor) -> Tensor:
        """The rows to cache: (num_tokens, hidden_size) -> (num_tokens, latent_dim)."""
        c_kv, k_shared = self.kv_a_proj_with_mqa(hidden).split(
            [self.kv_lora_rank, self.qk_rope_head_dim], dim=-1
        )
        return torch.cat([self.kv_a_layernorm(c_kv), k_shared], dim=-1)

    def _query(self, hidden: Tensor) -> Tensor:
        if self.q_proj is not None:
            return self.q_proj(hidden)
        assert self.q_a_proj is not None and self.q_a_layernorm is not None
        assert self.q_b_proj is not None
        return self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden)))

    def forward(self, hidden: Tensor, past_latent: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # hidden: (num_tokens, hidden_size); past_latent: (num_past, latent_dim) or None.
        # Returns out: (num_tokens, hidden_size), new latent rows: (num_tokens, latent_dim).
        num_tokens = hidden.shape[0]
        q = self._query(hidden).view(num_tokens, self.num_heads, self.qk_head_dim)
        new_latent = self.latent(hidden)
        rows = new_latent if past_latent is None else torch.cat([past_latent, new_latent])
        # Query i sits at position num_past + i and sees rows 0 .. num_past + i.
        num_past = rows.shape[0] - num_tokens
        visible = torch.ones(num_tokens, rows.shape[0], dtype=torch.bool, device=hidden.device)
        visible = visible.tril(diagonal=num_past)
        if self.absorbed_is_cheaper(num_tokens, rows.shape[0]):
            o = self._attend_absorbed(q, rows, visible)
        else:
            o = self._attend_expanded(q, rows, visible)
        return self.o_proj(o.reshape(num_tokens, self.num_heads * self.v_head_dim)), new_latent

    def absorbed_is_cheaper(self, num_tokens: int, num_rows: int) -> bool:
        """Multiply-adds of the two equivalent forms (projections plus attention)."""
        heads, rank = self.num_heads, self.kv_lora_rank
        nope, rope, v = self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim
        expanded = num_rows * rank * heads * (nope + v) + num_tokens * num_rows * heads * (
            nope + rope + v
        )
        absorbed = num_tokens * heads * rank * (nope + v) + num_tokens * num_rows * heads * (
            2 * rank + rope
        )
        return absorbed < expanded

    def _attend_expanded(self, q: Tensor, rows: Tensor, visible: Tensor) -> Tensor:
        """Keys and values per head from every row: cheap when queries are many (prefill).

        q: (num_tokens, num_heads, qk_head_dim); rows: (num_rows, latent_dim);
        visible: (num_tokens, num_rows) bool. Returns (num_tokens, num_heads, v_head_dim).
        """
        c_kv, k_shared = rows.split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        kv = self.kv_b_proj(c_kv).view(
            rows.shape[0], self.num_heads, self.qk_nope_head_dim + self.v_head_dim
        )
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        k_shared = k_shared[:, None, :].expand(-1, self.num_heads, -1)
        k = torch.cat([k_nope, k_shared], dim=-1)  # (num_rows, num_heads, qk_head_dim)
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1),
            k.transpose(0, 1),
            v.transpose(0, 1),
            attn_mask=visible,
            scale=self.scaling,
        )  # (num_heads, num_tokens, v_head_dim)
        return o.transpose(0, 1)

    def _attend_absorbed(self, q: Tensor, rows: Tensor, visible: Tensor) -> Tensor:
        """Attention in latent space, rows used as they are: cheap for few queries (decode).

        q_nope . (W_uk c) = (W_uk^T q_nope) . c, so the query is [W_uk^T q_nope | q_rope] and
        the keys are the rows themselves; the values are c, mapped by W_uv after attention.
        Same shapes as `_attend_expanded`.
        """
        rank, nope = self.kv_lora_rank, self.qk_nope_head_dim
        w_kv = self.kv_b_proj.weight.view(self.num_heads, nope + self.v_head_dim, rank)
        w_uk, w_uv = w_kv.split([nope, self.v_head_dim], dim=1)  # (num_heads, dim, rank)
        q_nope, q_rope = q.transpose(0, 1).split([nope, self.qk_rope_head_dim], dim=-1)
        q_latent = torch.cat([q_nope @ w_uk, q_rope], dim=-1)  # (num_heads, num_tokens, latent)
        keys = rows[None].expand(self.num_heads, -1, -1)
        o_latent = F.scaled_dot_product_attention(
            q_latent, keys, keys[..., :rank], attn_mask=visible, scale=self.scaling
        )  # (num_heads, num_tokens, rank)
        return (o_latent @ w_uv.transpose(1, 2)).transpose(0, 1)
