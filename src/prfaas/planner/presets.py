"""Model presets: the subset of each public ``config.json`` that KV size and FLOPs need.

Each preset holds config keys under their Hugging Face names, so it goes through the same
``specs_from_hf_config`` as a local file, plus published parameter counts for the roofline.
Sources are listed per preset. Facts marked "unverified" come from our reading of the public
model card/config and were not re-checked against the file; a local ``config.json`` passed
to ``prfaas kv-throughput --model PATH`` always wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelPreset:
    name: str
    hf_id: str
    total_params: float
    active_params: float  # per token, including the embedding/LM head
    config: dict[str, Any] = field(hash=False)
    sources: tuple[str, ...]


def _layer_types(num_layers: int, full_every: int) -> list[str]:
    return [
        "full_attention" if (i + 1) % full_every == 0 else "linear_attention"
        for i in range(num_layers)
    ]


# MiMo-V2-Flash: layer 0 global, then blocks of five sliding-window layers and one global.
_MIMO_PATTERN = [0] + [0 if (i + 1) % 6 == 0 else 1 for i in range(1, 48)]
# Kimi Linear 48B: MLA at these 1-based layers, KDA elsewhere.
_KIMI_FULL_LAYERS = [4, 8, 12, 16, 20, 24, 27]

PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            name="kimi-linear-48b",
            hf_id="moonshotai/Kimi-Linear-48B-A3B-Instruct",
            total_params=48e9,
            active_params=3e9,
            config={
                "model_type": "kimi_linear",
                "torch_dtype": "bfloat16",
                "num_hidden_layers": 27,
                "hidden_size": 2304,
                "num_attention_heads": 32,
                "kv_lora_rank": 512,
                "qk_nope_head_dim": 128,
                "qk_rope_head_dim": 64,
                "v_head_dim": 128,
                "linear_attn_config": {
                    "full_attn_layers": _KIMI_FULL_LAYERS,
                    "kda_layers": [i for i in range(1, 28) if i not in _KIMI_FULL_LAYERS],
                    "num_heads": 32,
                    "head_dim": 128,
                    "short_conv_kernel_size": 4,
                },
            },
            sources=(
                "huggingface.co/moonshotai/Kimi-Linear-48B-A3B-Instruct config.json "
                "(layers, hidden, MLA ranks, linear_attn_config)",
                "arXiv 2510.26692 (Kimi Linear tech report): 48B total / 3B active, KDA:MLA 3:1",
                "prfaas shared/reference/paper.md, section 'Kimi Linear'",
            ),
        ),
        ModelPreset(
            name="mimo-v2-flash",
            hf_id="XiaomiMiMo/MiMo-V2-Flash",
            total_params=309e9,
            active_params=15e9,
            config={
                "model_type": "mimo_v2",
                "torch_dtype": "bfloat16",
                "num_hidden_layers": 48,
                "hidden_size": 4096,
                "num_attention_heads": 64,
                "num_key_value_heads": 4,
                "head_dim": 192,
                "v_head_dim": 128,
                "swa_num_attention_heads": 64,
                "swa_num_key_value_heads": 8,
                "swa_head_dim": 192,
                "swa_v_head_dim": 128,
                "sliding_window": 128,
                "hybrid_layer_pattern": _MIMO_PATTERN,
            },
            sources=(
                "huggingface.co/XiaomiMiMo/MiMo-V2-Flash model card: 309B total / 15B active, "
                "SWA:GA 5:1, 128-token window",
                "MiMo-V2-Flash technical report (arXiv 2601.02780): first layer global, hybrid "
                "blocks of 5 SWA + 1 GA",
                "config.json keys (head_dim 192, v_head_dim 128, 4 GA / 8 SWA kv heads) as "
                "read by SGLang/vLLM MiMoV2 model code; the exact 9 GA / 39 SWA split over 48 "
                "layers is unverified",
            ),
        ),
        ModelPreset(
            name="qwen3.5-397b",
            hf_id="Qwen/Qwen3.5-397B-A17B",
            total_params=397e9,
            active_params=17e9,
            config={
                "model_type": "qwen3_5_moe",
                "torch_dtype": "bfloat16",
                "num_hidden_layers": 60,
                "hidden_size": 4096,
                "num_attention_heads": 32,
                "num_key_value_heads": 2,
                "head_dim": 256,
                "full_attention_interval": 4,
                "layer_types": _layer_types(60, 4),
                "linear_num_key_heads": 16,
                "linear_num_value_heads": 64,
                "linear_key_head_dim": 128,
                "linear_value_head_dim": 128,
                "linear_conv_kernel_dim": 4,
                "num_experts": 512,
                "num_experts_per_tok": 10,
                "moe_intermediate_size": 1024,
                "shared_expert_intermediate_size": 1024,
                "vocab_size": 248320,
            },
            sources=(
                "huggingface.co/Qwen/Qwen3.5-397B-A17B config.json (text_config): 60 layers, "
                "Gated DeltaNet 3 : gated attention 1, 16 k / 64 v linear heads of 128",
            ),
        ),
        ModelPreset(
            name="ring-2.5-1t",
            hf_id="inclusionAI/Ring-2.5-1T",
            total_params=1e12,
            active_params=63e9,
            config={
                "model_type": "bailing_moe_linear",
                "torch_dtype": "bfloat16",
                "num_hidden_layers": 80,
                "hidden_size": 8192,
                "num_attention_heads": 64,
                "head_dim": 128,
                "layer_group_size": 8,
                "kv_lora_rank": 512,
                "qk_rope_head_dim": 64,
                "qk_nope_head_dim": 128,
                "v_head_dim": 128,
            },
            sources=(
                "github.com/inclusionAI/Ring-V2.5 README and SGLang cookbook: ~1T total / 63B "
                "active, 1:7 MLA + Lightning Linear Attention",
                "layer_group_size semantics (every 8th layer global) from the Bailing linear "
                "model code in mlx-lm/vLLM",
                "unverified: 80 layers, hidden 8192, 64 linear heads of 128, MLA ranks 512/64 "
                "(Ling-1T lineage); check against the released config.json",
            ),
        ),
        ModelPreset(
            name="minimax-m2.5",
            hf_id="MiniMaxAI/MiniMax-M2.5",
            total_params=230e9,
            active_params=10e9,
            config={
                "model_type": "minimax_m2",
                "torch_dtype": "bfloat16",
                "num_hidden_layers": 62,
                "hidden_size": 3072,
                "num_attention_heads": 48,
                "num_key_value_heads": 8,
                "head_dim": 128,
            },
            sources=(
                "huggingface.co/MiniMaxAI/MiniMax-M2 config.json (M2.5 keeps the M2 "
                "architecture): 62 full-attention GQA layers, 48 q / 8 kv heads of 128; "
                "230B total / 10B active (unverified for M2.5 specifically)",
            ),
        ),
        ModelPreset(
            name="qwen3-235b",
            hf_id="Qwen/Qwen3-235B-A22B",
            total_params=235e9,
            active_params=22e9,
            config={
                "model_type": "qwen3_moe",
                "torch_dtype": "bfloat16",
                "num_hidden_layers": 94,
                "hidden_size": 4096,
                "num_attention_heads": 64,
                "num_key_value_heads": 4,
                "head_dim": 128,
                "num_experts": 128,
                "num_experts_per_tok": 8,
                "moe_intermediate_size": 1536,
                "vocab_size": 151936,
            },
            sources=("huggingface.co/Qwen/Qwen3-235B-A22B config.json; Qwen3 tech report",),
        ),
        ModelPreset(
            name="llama-3.1-8b",
            hf_id="meta-llama/Llama-3.1-8B",
            total_params=8.03e9,
            active_params=8.03e9,
            config={
                "model_type": "llama",
                "torch_dtype": "bfloat16",
                "num_hidden_layers": 32,
                "hidden_size": 4096,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "intermediate_size": 14336,
                "vocab_size": 128256,
            },
            sources=("huggingface.co/meta-llama/Llama-3.1-8B config.json",),
        ),
        ModelPreset(
            name="llama-3.1-70b",
            hf_id="meta-llama/Llama-3.1-70B",
            total_params=70.6e9,
            active_params=70.6e9,
            config={
                "model_type": "llama",
                "torch_dtype": "bfloat16",
                "num_hidden_layers": 80,
                "hidden_size": 8192,
                "num_attention_heads": 64,
                "num_key_value_heads": 8,
                "intermediate_size": 28672,
                "vocab_size": 128256,
            },
            sources=("huggingface.co/meta-llama/Llama-3.1-70B config.json",),
        ),
        ModelPreset(
            name="llama-3.1-405b",
            hf_id="meta-llama/Llama-3.1-405B",
            total_params=405.9e9,
            active_params=405.9e9,
            config={
                "model_type": "llama",
                "torch_dtype": "bfloat16",
                "num_hidden_layers": 126,
                "hidden_size": 16384,
                "num_attention_heads": 128,
                "num_key_value_heads": 8,
                "intermediate_size": 53248,
                "vocab_size": 128256,
            },
            sources=("huggingface.co/meta-llama/Llama-3.1-405B config.json",),
        ),
        ModelPreset(
            name="paper-1t-hybrid",
            hf_id="(internal; not released)",
            total_params=1.04e12,
            active_params=32.6e9,
            config={
                "model_type": "kimi_linear",
                "torch_dtype": "bfloat16",
                "num_hidden_layers": 61,
                "hidden_size": 7168,
                "num_attention_heads": 64,
                "kv_lora_rank": 512,
                "qk_nope_head_dim": 128,
                "qk_rope_head_dim": 64,
                "v_head_dim": 128,
                "layer_types": _layer_types(61, 4),
                "linear_num_heads": 64,
                "linear_head_dim": 128,
                "linear_conv_kernel_dim": 4,
            },
            sources=(
                "derived, not published: prfaas shared/reference/paper.md says only 'internal "
                "1T-parameter hybrid following Kimi Linear, KDA:MLA = 3:1'",
                "shapes and parameter counts assumed from Kimi K2 (huggingface.co/moonshotai/"
                "Kimi-K2-Instruct config.json: 61 layers, hidden 7168, 64 MLA heads, 1.04T "
                "total / 32.6B active) with every 4th layer MLA and 64 KDA heads of 128",
                "check: S_kv vs Table 5 (rows in 1000s): +8.4% at 1K, +4.3% at 8K, +2.4% at 32K, "
                "-0.7% at 128K",
            ),
        ),
        ModelPreset(
            name="smollm2-135m",
            hf_id="HuggingFaceTB/SmolLM2-135M",
            total_params=135e6,
            active_params=135e6,
            config={
                "model_type": "llama",
                "torch_dtype": "bfloat16",
                "num_hidden_layers": 30,
                "hidden_size": 576,
                "num_attention_heads": 9,
                "num_key_value_heads": 3,
                "intermediate_size": 1536,
                "vocab_size": 49152,
                "tie_word_embeddings": True,
            },
            sources=("huggingface.co/HuggingFaceTB/SmolLM2-135M config.json",),
        ),
    )
}
