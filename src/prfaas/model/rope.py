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
            # Half width: both halves of a head rotate by the same angles.
            self.cos = freqs.cos() * scaling  # (max_positions, head_dim / 2)
            self.sin = freqs.sin() * scaling

    def lookup(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the step's positions (T,), each (T, 1, head_dim / 2): looked up once
        per step and shared by all layers."""
        if self.cos.device != positions.device:
            self.cos, self.sin = self.cos.to(positions.device), self.sin.to(positions.device)
        cos = self.cos.index_select(0, positions).unsqueeze(1).to(dtype)
        sin = self.sin.index_select(0, positions).unsqueeze(1).to(dtype)
        return cos, sin

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: (T, num_heads, head_dim), k: (T, num_kv_heads, head_dim); positions: (T,).
        Returns rotated copies (the reference for ``rotate_``)."""
        cos, sin = self.lookup(positions, q.dtype)
        cos2, sin2 = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        return q * cos2 + _rotate_half(q) * sin2, k * cos2 + _rotate_half(k) * sin2


def rotate_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate x (T, heads, head_dim) in place by ``lookup``'s cos and sin (T, 1, head_dim / 2):
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), the halves of each head; two temporaries
    of half width instead of the reference's five full-width ones."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    x1_sin = x1 * sin
    x1.mul_(cos).sub_(x2 * sin)
    x2.mul_(cos).add_(x1_sin)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
