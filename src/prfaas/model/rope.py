"""Rotary position embeddings, with every scaling type transformers knows (via its init table)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _inv_freq(hf_config: Any, head_dim: int) -> tuple[torch.Tensor, float]:
    params = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        theta = float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        return inv, 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, None)
    return inv.float(), float(scaling)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin for positions ``[0, max_positions)``, looked up per token."""

    def __init__(self, hf_config: Any, head_dim: int, max_positions: int) -> None:
        super().__init__()
        # Plain float32 attributes, not buffers: built on the CPU even when the model is
        # constructed on the meta device, moved to the tokens' device on first use.
        with torch.device("cpu"):
            inv_freq, scaling = _inv_freq(hf_config, head_dim)
            positions = torch.arange(max_positions, dtype=torch.float)
            freqs = positions[:, None] * inv_freq[None, :]  # (max_positions, head_dim / 2)
            emb = torch.cat((freqs, freqs), dim=-1)
            self.cos = emb.cos() * scaling
            self.sin = emb.sin() * scaling

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: (T, num_heads, head_dim), k: (T, num_kv_heads, head_dim); positions: (T,)."""
        if self.cos.device != positions.device:
            self.cos, self.sin = self.cos.to(positions.device), self.sin.to(positions.device)
        cos = self.cos.index_select(0, positions).unsqueeze(1).to(q.dtype)  # (T, 1, head_dim)
        sin = self.sin.index_select(0, positions).unsqueeze(1).to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
