"""KV sizes per layer type against hand-computed values."""

import pytest

from prfaas.kvcache.spec import (
    ConfigFormatError,
    FullAttentionSpec,
    LinearStateSpec,
    MLASpec,
    kv_bytes,
    kv_bytes_block_rounded,
    specs_from_hf_config,
)
from prfaas.planner.presets import PRESETS

LLAMA_8B = PRESETS["llama-3.1-8b"].config


def test_llama_matches_engine_layout_exactly() -> None:
    # K and V of (num_tokens, num_kv_heads, head_dim) per layer in bf16.
    specs = specs_from_hf_config(LLAMA_8B)
    assert len(specs) == 32
    for num_tokens in (0, 1, 513, 8192):
        assert kv_bytes(specs, num_tokens) == 32 * num_tokens * 2 * 8 * 128 * 2


def test_head_dim_falls_back_to_hidden_over_heads_and_dtype_is_read() -> None:
    config = {
        "num_hidden_layers": 2,
        "hidden_size": 576,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "torch_dtype": "float32",
    }
    specs = specs_from_hf_config(config)
    assert specs == [FullAttentionSpec(3, 64, 4)] * 2
    assert kv_bytes(specs, 10) == 2 * 10 * 2 * 3 * 64 * 4
    assert kv_bytes(specs_from_hf_config(config, kv_dtype_bytes=1), 10) == 2 * 10 * 2 * 3 * 64


def test_mha_without_kv_heads_uses_attention_heads() -> None:
    specs = specs_from_hf_config(
        {"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 4}
    )
    assert kv_bytes(specs, 3) == 3 * 2 * 4 * 16 * 2


def test_mla_is_latent_plus_rope_per_token() -> None:
    spec = MLASpec(kv_lora_rank=512, qk_rope_head_dim=64, dtype_bytes=2)
    assert spec.kv_bytes(1) == 1152  # paper: 576 values per token per layer in bf16
    assert spec.kv_bytes_block_rounded(1, 16) == 16 * 1152


def test_sliding_window_caps_tokens_and_block_rounding_counts_touched_blocks() -> None:
    spec = FullAttentionSpec(
        num_kv_heads=8, head_dim=192, dtype_bytes=2, sliding_window=128, v_head_dim=128
    )
    per_token = 8 * (192 + 128) * 2
    assert spec.kv_bytes(100) == 100 * per_token
    assert spec.kv_bytes(10_000) == 128 * per_token
    # 100 tokens in blocks of 64: 2 blocks. 1000 tokens: live [872, 1000) -> blocks 13..15.
    assert spec.kv_bytes_block_rounded(100, 64) == 128 * per_token
    assert spec.kv_bytes_block_rounded(1000, 64) == 3 * 64 * per_token
    assert spec.kv_bytes_block_rounded(1024, 64) == 2 * 64 * per_token


def test_block_rounded_total_rounds_full_layers_only() -> None:
    specs = [
        FullAttentionSpec(2, 4, 2),
        LinearStateSpec("lightning", ()),
        MLASpec(8, 4, 2),
    ]
    assert kv_bytes_block_rounded(specs, 17, 16) == 32 * 2 * 2 * 4 * 2 + 32 * 12 * 2
    assert kv_bytes(specs, 17) == 17 * 2 * 2 * 4 * 2 + 17 * 12 * 2
    with pytest.raises(ValueError):
        kv_bytes_block_rounded(specs, 17, 0)


def test_kimi_linear_kda_and_mla_layers() -> None:
    specs = specs_from_hf_config(PRESETS["kimi-linear-48b"].config)
    kda = [s for s in specs if isinstance(s, LinearStateSpec)]
    mla = [s for s in specs if isinstance(s, MLASpec)]
    assert (len(kda), len(mla)) == (20, 7)
    assert [i + 1 for i, s in enumerate(specs) if isinstance(s, MLASpec)] == [
        4,
        8,
        12,
        16,
        20,
        24,
        27,
    ]
    recurrent = 32 * 128 * 128 * 4  # 2 MiB in float32
    conv = 3 * 32 * 128 * 3 * 2  # q, k, v windows of kernel - 1 = 3 taps in bf16
    assert kda[0].state_bytes == recurrent + conv
    assert kv_bytes(specs, 1000) == 20 * (recurrent + conv) + 7 * 1000 * 1152
    assert kv_bytes(specs, 0) == 0


def test_gated_deltanet_qwen35() -> None:
    specs = specs_from_hf_config(PRESETS["qwen3.5-397b"].config)
    assert sum(isinstance(s, LinearStateSpec) for s in specs) == 45
    full = [s for s in specs if isinstance(s, FullAttentionSpec)]
    assert len(full) == 15 and full[0] == FullAttentionSpec(2, 256, 2)
    gdn = next(s for s in specs if isinstance(s, LinearStateSpec))
    assert gdn.kind == "gated_deltanet"
    conv_channels = 2 * 16 * 128 + 64 * 128
    assert gdn.state_bytes == 64 * 128 * 128 * 4 + conv_channels * 3 * 2


def test_gated_deltanet_from_interval_and_nested_text_config() -> None:
    text = dict(PRESETS["qwen3.5-397b"].config)
    del text["layer_types"]
    a = specs_from_hf_config({"text_config": text})
    b = specs_from_hf_config(PRESETS["qwen3.5-397b"].config)
    assert a == b
    del text["torch_dtype"]
    fp32 = specs_from_hf_config({"torch_dtype": "float32", "text_config": text})
    assert fp32[3] == FullAttentionSpec(2, 256, 4)  # the top-level dtype applies


def test_mimo_mixes_global_and_sliding_shapes() -> None:
    specs = specs_from_hf_config(PRESETS["mimo-v2-flash"].config)
    full = [s for s in specs if isinstance(s, FullAttentionSpec) and s.sliding_window is None]
    swa = [s for s in specs if isinstance(s, FullAttentionSpec) and s.sliding_window == 128]
    assert (len(full), len(swa)) == (9, 39)
    assert full[0].bytes_per_token == 4 * (192 + 128) * 2
    assert swa[0].bytes_per_token == 8 * (192 + 128) * 2
    n = 32768
    assert kv_bytes(specs, n) == 9 * n * 2560 + 39 * 128 * 5120


def test_lightning_attention_bailing_and_minimax01() -> None:
    ring = specs_from_hf_config(PRESETS["ring-2.5-1t"].config)
    assert sum(isinstance(s, MLASpec) for s in ring) == 10  # 1:7
    lightning = next(s for s in ring if isinstance(s, LinearStateSpec))
    assert lightning.state_bytes == 64 * 128 * 128 * 4
    minimax01 = {
        "num_hidden_layers": 4,
        "hidden_size": 512,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "attn_type_list": [0, 0, 0, 1],
    }
    specs = specs_from_hf_config(minimax01)
    assert kv_bytes(specs, 10) == 3 * 8 * 64 * 64 * 4 + 10 * 2 * 8 * 64 * 2


def test_mamba2_state_and_nemotron_pattern() -> None:
    config = {
        "num_hidden_layers": 4,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "hybrid_override_pattern": "M-M*-M-",
        "mamba_num_heads": 8,
        "mamba_head_dim": 32,
        "ssm_state_size": 16,
        "n_groups": 2,
        "conv_kernel": 4,
    }
    specs = specs_from_hf_config(config)
    assert [type(s).__name__ for s in specs] == [
        "LinearStateSpec",
        "LinearStateSpec",
        "FullAttentionSpec",
        "LinearStateSpec",
    ]
    ssm = 8 * 32 * 16 * 4
    conv = (8 * 32 + 2 * 2 * 16) * 3 * 2
    assert kv_bytes(specs, 7) == 3 * (ssm + conv) + 7 * 2 * 2 * 64 * 2


def test_mistral_style_sliding_window_and_qwen2_disabled_window() -> None:
    base = {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "sliding_window": 8,
    }
    assert kv_bytes(specs_from_hf_config(base), 100) == 2 * 8 * 2 * 4 * 16 * 2
    disabled = {**base, "use_sliding_window": False}
    assert kv_bytes(specs_from_hf_config(disabled), 100) == 2 * 100 * 2 * 4 * 16 * 2


def test_bad_configs_raise_config_format_error() -> None:
    with pytest.raises(ConfigFormatError, match="num_hidden_layers"):
        specs_from_hf_config({"hidden_size": 4})
    with pytest.raises(ConfigFormatError, match="unknown layer_types"):
        specs_from_hf_config({"num_hidden_layers": 1, "layer_types": ["magic"]})
    with pytest.raises(ConfigFormatError, match="dtype"):
        specs_from_hf_config({"num_hidden_layers": 1, "torch_dtype": "int3"})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_one_spec_per_layer(name: str) -> None:
    config = PRESETS[name].config
    specs = specs_from_hf_config(config)
    assert len(specs) == config["num_hidden_layers"]
    assert kv_bytes(specs, 2048) > kv_bytes(specs, 1024) > 0


def test_kimi_linear_as_transformers_saves_it_natively() -> None:
    # transformers' KimiLinearConfig writes linear_num_heads/linear_head_dim/... and
    # layer_types, no linear_attn_config block; its "linear_attention" layers are KDA.
    from transformers import KimiLinearConfig

    preset = PRESETS["kimi-linear-48b"].config
    full = preset["linear_attn_config"]["full_attn_layers"]
    native = KimiLinearConfig(
        num_hidden_layers=27,
        layer_types=["full_attention" if i + 1 in full else "linear_attention" for i in range(27)],
        linear_num_heads=32,
        linear_head_dim=128,
        linear_conv_kernel_dim=4,
        dtype="bfloat16",
    ).to_dict()
    assert "linear_attn_config" not in native
    assert specs_from_hf_config(native) == specs_from_hf_config(preset)
    # model_type alone decides: transformers' default Kimi pattern, KDA shapes by default.
    bare = {"model_type": "kimi_linear", "num_hidden_layers": 8, "kv_lora_rank": 512}
    bare["qk_rope_head_dim"] = 64
    kinds = [type(s).__name__ for s in specs_from_hf_config(bare)]
    assert kinds == ["LinearStateSpec"] * 4 + ["MLASpec"] + ["LinearStateSpec"] * 3
