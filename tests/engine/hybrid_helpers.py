"""Tiny random-weight Kimi Linear checkpoints (saved with transformers) for the engine tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from prfaas.engine.engine import Engine
from prfaas.engine.sampling_params import SamplingParams
from prfaas.kvcache.hybrid import StateCacheConfig
from tests.conftest import _tokenizer_files
from tests.engine.helpers import make_engine

VOCAB = 97
KDA, MLA = "linear_attention", "full_attention"
# (layer pattern, first_k_dense_replace): 3:1, 1:1, full attention first, a single MLA
# layer; dense and MoE MLPs.
PATTERNS: dict[str, tuple[list[str], int]] = {
    "3to1_moe": ([KDA, KDA, KDA, MLA], 1),
    "1to1_moe": ([KDA, MLA, KDA, MLA], 0),
    "mla_first_dense": ([MLA, KDA, KDA], 3),
    "single_mla_dense": ([KDA, MLA, KDA], 3),
}
BASE: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 48,
    "intermediate_size": 64,
    "moe_intermediate_size": 24,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16,
    "v_head_dim": 12,
    "num_experts": 6,
    "num_experts_per_token": 2,
    "num_expert_group": 3,
    "topk_group": 2,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


# How config.json names the KDA shapes and the layer pattern: transformers' KimiLinearConfig
# given a `linear_attn_config` block (kept in the file beside `layer_types`); the same class
# given only its native `linear_*` attributes (no block); or the original checkpoint's form
# (1-based `kda_layers` / `full_attn_layers`, `first_k_dense_replace`, no `layer_types`).
CONFIG_STYLES = ("linear_attn_config", "native", "checkpoint")
KDA_SHAPES = {"head_dim": 8, "num_heads": 4, "short_conv_kernel_size": 4}


def save_kimi_checkpoint(
    folder: Path, layer_types: list[str], first_dense: int, style: str = "linear_attn_config"
) -> Path:
    from transformers import KimiLinearConfig, KimiLinearForCausalLM

    if style not in CONFIG_STYLES:
        raise ValueError(f"style {style!r} not in {CONFIG_STYLES}")
    shapes: dict[str, Any] = (
        {
            "linear_head_dim": KDA_SHAPES["head_dim"],
            "linear_num_heads": KDA_SHAPES["num_heads"],
            "linear_conv_kernel_dim": KDA_SHAPES["short_conv_kernel_size"],
        }
        if style == "native"
        else {"linear_attn_config": KDA_SHAPES}
    )
    config = KimiLinearConfig(
        **BASE,
        **shapes,
        num_hidden_layers=len(layer_types),
        layer_types=layer_types,
        first_k_dense_replace=first_dense,
    )
    torch.manual_seed(0)
    model = KimiLinearForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # Spread-out weights so greedy decoding is decisive (random init is nearly flat).
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "dt_bias")):
                continue
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.3 * noise)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
    model.save_pretrained(folder)
    if style == "checkpoint":
        _rewrite_as_checkpoint_config(folder / "config.json", layer_types, first_dense)
    _tokenizer_files(folder, VOCAB)
    return folder


def _rewrite_as_checkpoint_config(path: Path, layer_types: list[str], first_dense: int) -> None:
    raw = json.loads(path.read_text())
    for key in ("layer_types", "mlp_layer_types", *(k for k in raw if k.startswith("linear_"))):
        raw.pop(key, None)
    raw["first_k_dense_replace"] = first_dense
    raw["linear_attn_config"] = {
        **KDA_SHAPES,
        "kda_layers": [i + 1 for i, t in enumerate(layer_types) if t == KDA],
        "full_attn_layers": [i + 1 for i, t in enumerate(layer_types) if t == MLA],
    }
    path.write_text(json.dumps(raw, indent=2))


def kimi_engine(
    folder: Path, cache_dir: Path, state: StateCacheConfig | None = None, **kw: Any
) -> Engine:
    kw.setdefault("block_size", 16)
    kw.setdefault("num_kv_blocks", 64)
    kw.setdefault("dtype", "float32")
    engine = make_engine(folder, cache_dir, **kw)
    # Tiny states: the default share of a 64-block pool would hold only one snapshot.
    return Engine(engine.config, engine.loaded, state or StateCacheConfig(max_snapshots=16))


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def prompt_of(num_tokens: int, seed: int = 4) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (num_tokens,), generator=gen).tolist()


def run(engine: Engine, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Generate for all prompts at once (batched), checking the pool after every step."""
    reqs = [engine.add_request(p, greedy(max_tokens)) for p in prompts]
    while engine.has_unfinished():
        engine.step()
        engine.check_integrity()
    return [list(r.output_token_ids) for r in reqs]
