"""Kimi Linear architecture config, read from a Hugging Face `config.json`.

Resolves the same defaults as transformers' `KimiLinearConfig`: the checkpoint's
`linear_attn_config` (1-based `full_attn_layers` / `kda_layers`) or `layer_types`, and MoE
versus dense MLPs from `mlp_layer_types` or `first_k_dense_replace`. Accepts both the
attribute names and the serialised aliases (`num_experts` for `num_local_experts`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FULL_ATTENTION = "full_attention"  # MLA layer: paged latent KV
LINEAR_ATTENTION = "linear_attention"  # KDA layer: fixed-size recurrent state
DENSE_MLP = "dense"
SPARSE_MLP = "sparse"  # MoE with shared experts

# attribute name -> name it is serialised under (transformers' KimiLinearConfig.attribute_map)
_ALIASES = {
    "num_local_experts": "num_experts",
    "num_experts_per_tok": "num_experts_per_token",
    "n_shared_experts": "num_shared_experts",
    "n_group": "num_expert_group",
    "norm_topk_prob": "moe_renormalize",
}


@dataclass(frozen=True)
class KimiConfig:
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    rms_norm_eps: float
    hidden_act: str
    layer_types: tuple[str, ...]
    mlp_layer_types: tuple[str, ...]
    tie_word_embeddings: bool
    # Dense MLP
    intermediate_size: int
    # MoE
    moe_intermediate_size: int
    num_local_experts: int
    num_experts_per_tok: int
    n_shared_experts: int
    n_group: int
    topk_group: int
    norm_topk_prob: bool
    routed_scaling_factor: float
    # MLA (full attention). No positional encoding: the "rope" part of q/k is a plain
    # projection, the name is kept from DeepSeek's MLA.
    num_attention_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    attention_bias: bool
    # KDA (linear attention)
    linear_num_heads: int
    linear_head_dim: int
    linear_conv_kernel_dim: int

    def __post_init__(self) -> None:
        for name, types, allowed in (
            ("layer_types", self.layer_types, {FULL_ATTENTION, LINEAR_ATTENTION}),
            ("mlp_layer_types", self.mlp_layer_types, {DENSE_MLP, SPARSE_MLP}),
        ):
            if len(types) != self.num_hidden_layers:
                raise ValueError(
                    f"{name} has {len(types)} entries, {self.num_hidden_layers} layers"
                )
            if not set(types) <= allowed:
                raise ValueError(f"{name} must be drawn from {sorted(allowed)}: {types}")
        if SPARSE_MLP in self.mlp_layer_types:
            if self.num_local_experts % self.n_group:
                raise ValueError("num_local_experts must be a multiple of n_group")
            if self.num_local_experts // self.n_group < 2:
                raise ValueError("group scores take the top 2 experts of each group")
        if self.linear_conv_kernel_dim < 1:
            raise ValueError("linear_conv_kernel_dim must be >= 1")

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_dim(self) -> int:
        """Values stored per token per MLA layer: normalised kv latent + shared key part."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> KimiConfig:
        """Builds the config from a `config.json` dict (transformers' or the checkpoint's)."""

        def get(name: str, default: Any = None) -> Any:
            if name in raw:
                return raw[name]
            return raw.get(_ALIASES.get(name, name), default)

        num_layers = int(get("num_hidden_layers", 27))
        linear = raw.get("linear_attn_config") or {}
        layer_types = get("layer_types")
        if layer_types is None:
            if "full_attn_layers" in linear and "kda_layers" in linear:
                by_index: dict[int, str] = {}
                for i in linear["full_attn_layers"]:
                    by_index[i - 1] = FULL_ATTENTION  # 1-based in the checkpoint
                for i in linear["kda_layers"]:
                    by_index[i - 1] = LINEAR_ATTENTION
                layer_types = [by_index.get(i, "") for i in range(num_layers)]
            else:
                layer_types = [
                    FULL_ATTENTION if i and i % 4 == 0 else LINEAR_ATTENTION
                    for i in range(num_layers)
                ]
        mlp_layer_types = get("mlp_layer_types")
        if mlp_layer_types is None:
            first_dense = int(raw.get("first_k_dense_replace", 1))
            mlp_layer_types = [
                DENSE_MLP if i < first_dense else SPARSE_MLP for i in range(num_layers)
            ]
        v_head_dim = get("v_head_dim")
        return cls(
            hidden_size=int(get("hidden_size", 2304)),
            num_hidden_layers=num_layers,
            vocab_size=int(get("vocab_size", 163840)),
            rms_norm_eps=float(get("rms_norm_eps", 1e-5)),
            hidden_act=str(get("hidden_act", "silu")),
            layer_types=tuple(layer_types),
            mlp_layer_types=tuple(mlp_layer_types),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            intermediate_size=int(get("intermediate_size", 9216)),
            moe_intermediate_size=int(get("moe_intermediate_size", 1024)),
            num_local_experts=int(get("num_local_experts", 256)),
            num_experts_per_tok=int(get("num_experts_per_tok", 8)),
            n_shared_experts=int(get("n_shared_experts", 1)),
            n_group=int(get("n_group", 1)),
            topk_group=int(get("topk_group", 1)),
            norm_topk_prob=bool(get("norm_topk_prob", True)),
            routed_scaling_factor=float(get("routed_scaling_factor", 2.446)),
            num_attention_heads=int(get("num_attention_heads", 32)),
            q_lora_rank=get("q_lora_rank"),
            kv_lora_rank=int(get("kv_lora_rank", 512)),
            qk_nope_head_dim=int(get("qk_nope_head_dim", 128)),
            qk_rope_head_dim=int(get("qk_rope_head_dim", 64)),
            v_head_dim=128 if v_head_dim is None else int(v_head_dim),
            attention_bias=bool(get("attention_bias", False)),
            linear_num_heads=int(linear.get("num_heads", get("linear_num_heads", 32))),
            linear_head_dim=int(linear.get("head_dim", get("linear_head_dim", 128))),
            linear_conv_kernel_dim=int(
                linear.get("short_conv_kernel_size", get("linear_conv_kernel_dim", 4))
            ),
        )
