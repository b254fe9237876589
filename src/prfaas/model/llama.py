"""The Llama family in plain PyTorch: Llama, SmolLM2, Qwen2 (q/k/v bias), Qwen3 (q/k norm).

Activations are flattened: a step's tokens from all requests form rows ``(T, hidden)``; the
attention layers find each request's context through ``AttentionMetadata``. Parameter names
follow Hugging Face, except that q/k/v and gate/up projections are fused into ``qkv_proj`` and
``gate_up_proj`` (one matmul each); ``load_weights`` maps the names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from prfaas.model.attention import AttentionMetadata, paged_attention, write_kv
from prfaas.model.layers import GateUpLinear, Linear, PackedWeight, RMSNorm, linear
from prfaas.model.rope import RotaryEmbedding, rotate_

KVCache = tuple[torch.Tensor, torch.Tensor]  # K, V: (num_slots, num_kv_heads, head_dim)
Rope = tuple[torch.Tensor, torch.Tensor]  # the step's cos, sin: (T, 1, head_dim / 2) each


def head_dim_of(cfg: Any) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = head_dim_of(cfg)
        self.scale = self.head_dim**-0.5
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        bias = bool(getattr(cfg, "attention_bias", False)) or cfg.model_type == "qwen2"
        self.qkv_proj = Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=bias)
        self.o_proj = Linear(
            self.q_size, cfg.hidden_size, bias=bool(getattr(cfg, "attention_bias", False))
        )
        self.qk_norm = cfg.model_type == "qwen3"
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        meta: AttentionMetadata,
        cache: KVCache,
        residual: torch.Tensor,
    ) -> torch.Tensor:
        """``residual`` + attention of x (the residual added in the output projection)."""
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(x)  # (T, q_size + 2 * kv_size), rows [q | k | v]
        # q and k side by side, (T, num_heads + num_kv_heads, head_dim): one rotation for both.
        qk = qkv[:, : self.q_size + self.kv_size].view(num_tokens, -1, self.head_dim)
        v = qkv[:, self.q_size + self.kv_size :].view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            qk[:, : self.num_heads] = self.q_norm(qk[:, : self.num_heads])
            qk[:, self.num_heads :] = self.k_norm(qk[:, self.num_heads :])
        rotate_(qk, *rope)
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
        write_kv(cache[0], cache[1], k, v, meta.slot_mapping)
        o = paged_attention(q, k, v, cache[0], cache[1], meta, self.scale)
        return self.o_proj.forward_add(o.reshape(num_tokens, self.q_size), residual)


class LlamaMLP(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        bias = bool(getattr(cfg, "mlp_bias", False))
        self.intermediate = cfg.intermediate_size
        self.gate_up_proj = GateUpLinear(cfg.hidden_size, 2 * self.intermediate, bias=bias)
        self.down_proj = Linear(self.intermediate, cfg.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual`` + the MLP of x (the residual added in the down projection)."""
        return self.down_proj.forward_add(self.gate_up_proj(x), residual)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(
        self, x: torch.Tensor, rope: Rope, meta: AttentionMetadata, cache: KVCache
    ) -> torch.Tensor:
        x = self.self_attn(self.input_layernorm(x), rope, meta, cache, residual=x)
        return self.mlp(self.post_attention_layernorm(x), residual=x)


class LlamaBackbone(nn.Module):
    def __init__(self, cfg: Any, max_positions: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        # One table shared by all layers (not a parameter, so it is not in the state dict).
        self.rope = RotaryEmbedding(cfg, head_dim_of(cfg), max_positions)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """forward(input_ids (T,), positions (T,), meta, caches) -> hidden (T, hidden_size)."""

    def __init__(self, cfg: Any, max_positions: int) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaBackbone(cfg, max_positions)
        self.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))
        if not self.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # The logits' weight (the embedding's when tied) reordered for oneDNN: one more copy.
        self.logits_weight = PackedWeight()

    @property
    def num_kv_layers(self) -> int:
        return len(self.model.layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        caches: list[KVCache],
        on_layer: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """``on_layer(i)`` runs after layer ``i`` has written this step's K/V into ``caches``."""
        x = self.model.embed_tokens(input_ids)
        rope = self.model.rope.lookup(positions, x.dtype)
        for i, (layer, cache) in enumerate(zip(self.model.layers, caches, strict=True)):
            x = layer(x, rope, meta, cache)
            if on_layer is not None:
                on_layer(i)
        return self.model.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (N, hidden_size) -> float32 logits (N, vocab_size)."""
        weight = self.model.embed_tokens.weight if self.tie_word_embeddings else self.lm_head.weight
        return linear(hidden, weight, None, self.logits_weight).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load Hugging Face named tensors, fusing q/k/v and gate/up as they arrive."""
        params = dict(self.named_parameters())
        pending: dict[str, dict[str, torch.Tensor]] = {}
        fused = {
            "q_proj": ("qkv_proj", 3),
            "k_proj": ("qkv_proj", 3),
            "v_proj": ("qkv_proj", 3),
            "gate_proj": ("gate_up_proj", 2),
            "up_proj": ("gate_up_proj", 2),
        }
        order = {"q_proj": 0, "k_proj": 1, "v_proj": 2, "gate_proj": 0, "up_proj": 1}
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb" in name:
                continue
            if name == "lm_head.weight" and self.tie_word_embeddings:
                continue
            parts = name.split(".")
            part = parts[-2] if len(parts) >= 2 else ""
            if part in fused:
                target, num_parts = fused[part]
                key = ".".join([*parts[:-2], target, parts[-1]])
                group = pending.setdefault(key, {})
                group[part] = tensor
                if len(group) < num_parts:
                    continue
                tensor = torch.cat(
                    [t for _, t in sorted(group.items(), key=lambda kv: order[kv[0]])], dim=0
                )
                del pending[key]
                name = key
            if name not in params:
                raise KeyError(f"checkpoint tensor {name!r} has no place in the model")
            param = params[name]
            if param.shape != tensor.shape:
                raise ValueError(
                    f"{name}: checkpoint shape {tuple(tensor.shape)}, "
                    f"model expects {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(tensor)
            loaded.add(name)
        missing = set(params) - loaded
        if pending or missing:
            raise ValueError(f"checkpoint incomplete: missing {sorted(missing)[:8]}")
