"""A model as the planner sees it: per-layer KV specs, parameter counts and FLOPs per token.

Built from a preset name or a local ``config.json``. FLOPs are the usual analytical count:
2 x (non-embedding active parameters) per token for the GEMMs, plus attention: causal full
attention costs heads x (d_qk + d_v) x l^2 per layer (2 FLOPs per MAC, half the square), a
sliding window caps the square at the window, and a linear-attention/SSM layer costs about
6 x (recurrent state elements) per token (state update, readout, intra-chunk terms).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prfaas.kvcache.spec import (
    FullAttentionSpec,
    LayerSpec,
    LinearStateSpec,
    MLASpec,
    kv_bytes,
    specs_from_hf_config,
)
from prfaas.planner.presets import PRESETS

LINEAR_FLOPS_PER_STATE_ELEMENT = 6.0


@dataclass(frozen=True)
class AttentionShape:
    """Query-side geometry of one layer for FLOPs (KV-side sizes live in the LayerSpec)."""

    num_heads: int
    qk_dim: int
    v_dim: int
    window: int | None = None
    state_elements: int = 0  # > 0 marks a linear/SSM layer


@dataclass(frozen=True)
class PlannerModel:
    name: str
    specs: tuple[LayerSpec, ...]
    shapes: tuple[AttentionShape, ...]
    total_params: float
    active_params: float
    embedding_params: float  # vocab x hidden, counted once for input and once for an untied head

    def kv_bytes(self, num_tokens: int) -> int:
        return kv_bytes(self.specs, num_tokens)

    def gemm_flops_per_token(self) -> float:
        return 2.0 * max(self.active_params - self.embedding_params, 0.0)

    def prefill_flops(self, num_tokens: float) -> float:
        """FLOPs to prefill ``num_tokens`` uncached tokens from an empty context."""
        return (
            self.gemm_flops_per_token() * num_tokens
            + self.attention_flops(num_tokens)
            + self.linear_flops(num_tokens)
        )

    def attention_flops(self, num_tokens: float) -> float:
        """Softmax-attention FLOPs (QK^T and PV) of a prefill of ``num_tokens``, all layers."""
        flops = 0.0
        for shape in self.shapes:
            if shape.state_elements:
                continue
            pairs = num_tokens * num_tokens / 2  # causal (query, key) pairs
            if shape.window is not None and num_tokens > shape.window:
                pairs = num_tokens * shape.window - shape.window * shape.window / 2
            flops += 2.0 * shape.num_heads * (shape.qk_dim + shape.v_dim) * pairs
        return flops

    def linear_flops(self, num_tokens: float) -> float:
        """Linear-attention / SSM FLOPs of a prefill of ``num_tokens``, all layers."""
        elements = sum(shape.state_elements for shape in self.shapes)
        return LINEAR_FLOPS_PER_STATE_ELEMENT * elements * num_tokens

    @property
    def num_layers(self) -> int:
        return len(self.specs)

    def decode_flops(self, context_tokens: float) -> float:
        """FLOPs for one new token with ``context_tokens`` already in the cache."""
        flops = self.gemm_flops_per_token()
        for shape in self.shapes:
            if shape.state_elements:
                flops += LINEAR_FLOPS_PER_STATE_ELEMENT * shape.state_elements
                continue
            keys = context_tokens if shape.window is None else min(context_tokens, shape.window)
            flops += 2.0 * shape.num_heads * (shape.qk_dim + shape.v_dim) * keys
        return flops


def load_planner_model(name_or_path: str) -> PlannerModel:
    """A preset by name (see ``PRESETS``) or a path to a Hugging Face ``config.json``."""
    if name_or_path in PRESETS:
        preset = PRESETS[name_or_path]
        return model_from_config(
            preset.name, preset.config, preset.total_params, preset.active_params
        )
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a file"
        )
    config = json.loads(path.read_text())
    return model_from_config(path.parent.name or path.stem, config)


def model_from_config(
    name: str,
    config: Mapping[str, Any],
    total_params: float | None = None,
    active_params: float | None = None,
) -> PlannerModel:
    cfg: Mapping[str, Any] = config.get("text_config") or config
    specs = tuple(specs_from_hf_config(config))
    shapes = tuple(_shape(cfg, spec) for spec in specs)
    hidden = int(cfg.get("hidden_size", 0))
    vocab = int(cfg.get("vocab_size", 0))
    embedding = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    estimate = estimate_active_params(cfg, specs)
    return PlannerModel(
        name=name,
        specs=specs,
        shapes=shapes,
        total_params=float(total_params if total_params is not None else estimate),
        active_params=float(active_params if active_params is not None else estimate),
        embedding_params=float(embedding),
    )


def _shape(cfg: Mapping[str, Any], spec: LayerSpec) -> AttentionShape:
    heads = int(cfg.get("num_attention_heads", 0))
    if isinstance(spec, LinearStateSpec):
        recurrent = spec.parts[0].num_elements
        return AttentionShape(0, 0, 0, state_elements=recurrent)
    if isinstance(spec, MLASpec):
        qk = int(cfg.get("qk_nope_head_dim", 128)) + spec.qk_rope_head_dim
        return AttentionShape(heads, qk, int(cfg.get("v_head_dim", 128)))
    assert isinstance(spec, FullAttentionSpec)
    if spec.sliding_window is not None and cfg.get("swa_num_attention_heads") is not None:
        heads = int(cfg["swa_num_attention_heads"])
    v_dim = spec.head_dim if spec.v_head_dim is None else spec.v_head_dim
    return AttentionShape(heads, spec.head_dim, v_dim, window=spec.sliding_window)


def estimate_active_params(cfg: Mapping[str, Any], specs: tuple[LayerSpec, ...]) -> float:
    """Rough active parameter count from config keys (used when no published count exists).

    Attention projections ~ 4 x hidden^2 per layer (exact for MHA, an upper bound for GQA);
    the MLP is gated (3 matrices), dense or the routed top-k plus shared experts.
    """
    hidden = float(cfg.get("hidden_size", 0))
    if cfg.get("num_key_value_heads") and cfg.get("num_attention_heads"):
        head_dim = float(cfg.get("head_dim") or hidden / float(cfg["num_attention_heads"]))
        q_dim = float(cfg["num_attention_heads"]) * head_dim
        kv_dim = float(cfg["num_key_value_heads"]) * head_dim
        attention = hidden * (2 * q_dim + 2 * kv_dim)
    else:
        attention = 4 * hidden * hidden
    experts_per_token = cfg.get("num_experts_per_tok") or cfg.get("num_experts_per_token")
    if experts_per_token and cfg.get("moe_intermediate_size"):
        moe = float(cfg["moe_intermediate_size"])
        shared = float(
            cfg.get("shared_expert_intermediate_size")
            or moe * float(cfg.get("n_shared_experts") or cfg.get("num_shared_experts") or 0)
        )
        mlp = 3 * hidden * (float(experts_per_token) * moe + shared)
    else:
        mlp = 3 * hidden * float(cfg.get("intermediate_size", 4 * hidden))
    vocab = float(cfg.get("vocab_size", 0))
    embedding = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    return len(specs) * (attention + mlp) + embedding
