"""Kimi Linear MLP blocks: dense SwiGLU and MoE (sigmoid router, grouped top-k, shared experts).

Parameter names equal those of transformers' `KimiLinearMLP` and `KimiLinearMoE`, whose
experts are stacked: `experts.gate_up_proj` (num_experts, 2 * moe_intermediate, hidden) and
`experts.down_proj` (num_experts, hidden, moe_intermediate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prfaas.model.kimi_config import KimiConfig

Tensor = torch.Tensor


def _activation(name: str) -> nn.Module:
    if name != "silu":
        raise ValueError(f"unsupported hidden_act {name!r}")
    return nn.SiLU()


class KimiMLP(nn.Module):
    """`down(act(gate(x)) * up(x))`."""

    def __init__(self, config: KimiConfig, intermediate_size: int | None = None) -> None:
        super().__init__()
        inter = config.intermediate_size if intermediate_size is None else intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, inter, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, inter, bias=False)
        self.down_proj = nn.Linear(inter, config.hidden_size, bias=False)
        self.act_fn = _activation(config.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class KimiTopkRouter(nn.Module):
    """DeepSeek-V3 style router: sigmoid scores, top groups, then top-k within them.

    The correction bias only steers the choice; the weights are the unbiased scores of the
    chosen experts (renormalised if configured), times `routed_scaling_factor`.
    """

    e_score_correction_bias: Tensor  # (num_experts,) buffer

    def __init__(self, config: KimiConfig) -> None:
        super().__init__()
        self.num_experts = config.num_local_experts
        self.top_k = config.num_experts_per_tok
        self.num_group = config.n_group
        self.topk_group = config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.zeros(self.num_experts, config.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(self.num_experts))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # x: (num_tokens, hidden) -> weights: (num_tokens, top_k) float32, indices: like weights
        scores = F.linear(x.float(), self.weight.float()).sigmoid()  # (num_tokens, num_experts)
        choice = scores + self.e_score_correction_bias
        per_group = choice.view(x.shape[0], self.num_group, self.num_experts // self.num_group)
        group_scores = per_group.topk(2, dim=-1)[0].sum(dim=-1)  # (num_tokens, num_group)
        group_idx = group_scores.topk(self.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1.0).bool()
        expert_mask = group_mask[:, :, None].expand_as(per_group).reshape(choice.shape)
        choice = choice.masked_fill(~expert_mask, float("-inf"))
        indices = choice.topk(self.top_k, dim=-1, sorted=False)[1]
        weights = scores.gather(1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.routed_scaling_factor, indices


class KimiExperts(nn.Module):
    """Routed experts as stacked weights.

    The (token, slot) pairs are sorted by expert and each expert's rows run as one group of a
    grouped matmul whose group ends are a device tensor: no expert id or count is read back
    to the host, so a step never waits on the device here. ``forward_loop`` is the reference
    (one matmul per expert present, which reads the expert ids back).
    """

    def __init__(self, config: KimiConfig) -> None:
        super().__init__()
        num, hidden, inter = (
            config.num_local_experts,
            config.hidden_size,
            config.moe_intermediate_size,
        )
        self.num_experts = num
        self.gate_up_proj = nn.Parameter(torch.zeros(num, 2 * inter, hidden))
        self.down_proj = nn.Parameter(torch.zeros(num, hidden, inter))
        self.act_fn = _activation(config.hidden_act)

    def forward(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        # x: (num_tokens, hidden); indices, weights: (num_tokens, top_k)
        top_k = indices.shape[1]
        flat = indices.reshape(-1)  # (num_tokens * top_k,) pair p = token * top_k + slot
        order = flat.argsort(stable=True)  # pairs grouped by expert
        token = order // top_k
        ends = torch.bincount(flat, minlength=self.num_experts).cumsum(0).to(torch.int32)
        rows = x.index_select(0, token)  # (pairs, hidden)
        gate_up = torch._grouped_mm(rows, self.gate_up_proj.transpose(-2, -1), offs=ends)
        gate, up = gate_up.chunk(2, dim=-1)
        y = torch._grouped_mm(
            (self.act_fn(gate) * up).contiguous(), self.down_proj.transpose(-2, -1), offs=ends
        )
        y = y * weights.reshape(-1).index_select(0, order)[:, None]
        return torch.zeros_like(x).index_add_(0, token, y.to(x.dtype))

    def forward_loop(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        out = torch.zeros_like(x)
        for expert in indices.unique().tolist():
            token, slot = torch.where(indices == expert)
            gate, up = F.linear(x[token], self.gate_up_proj[expert]).chunk(2, dim=-1)
            y = F.linear(self.act_fn(gate) * up, self.down_proj[expert])
            out.index_add_(0, token, (y * weights[token, slot, None]).to(out.dtype))
        return out


class KimiMoE(nn.Module):
    """Routed experts plus always-on shared experts."""

    def __init__(self, config: KimiConfig) -> None:
        super().__init__()
        self.experts = KimiExperts(config)
        self.gate = KimiTopkRouter(config)
        self.shared_experts = KimiMLP(
            config, intermediate_size=config.moe_intermediate_size * config.n_shared_experts
        )

    def forward(self, x: Tensor) -> Tensor:
        # x: (num_tokens, hidden) -> (num_tokens, hidden)
        weights, indices = self.gate(x)
        return self.experts(x, indices, weights) + self.shared_experts(x)
