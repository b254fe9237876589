"""Kimi Linear layers loaded with transformers' weights give transformers' outputs."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn
from transformers import DynamicCache, KimiLinearConfig, KimiLinearForCausalLM

from prfaas.model.kimi_config import KimiConfig
from prfaas.model.kimi_layers import KdaState, KimiDeltaAttention, KimiMLAttention
from prfaas.model.kimi_mlp import KimiMLP, KimiMoE

Tensor = torch.Tensor
ATOL = 1e-4
HIDDEN = 64


# Tiny tensors: intra-op threads only add synchronisation (and stall on shared cores).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# 1-based layer indices as in a checkpoint's linear_attn_config: KDA, MLA, KDA, MLA.
TINY = {
    "vocab_size": 128,
    "hidden_size": HIDDEN,
    "intermediate_size": 96,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16,
    "v_head_dim": 12,
    "num_experts": 8,
    "num_experts_per_token": 2,
    "num_expert_group": 2,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "linear_attn_config": {
        "head_dim": 16,
        "num_heads": 4,
        "short_conv_kernel_size": 4,
        "full_attn_layers": [2, 4],
        "kda_layers": [1, 3],
    },
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
KDA_LAYER, MLA_LAYER, DENSE_LAYER, MOE_LAYER = 0, 1, 0, 2


def _randomise(model: nn.Module, gen: torch.Generator) -> None:
    """Random weights everywhere, keeping the trained-like gate init (A_log, dt_bias)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "dt_bias")):
                continue
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))


@functools.cache
def _hf_model(q_lora_rank: int | None = None) -> KimiLinearForCausalLM:
    torch.manual_seed(0)
    config = KimiLinearConfig(**TINY, q_lora_rank=q_lora_rank)
    model = KimiLinearForCausalLM(config).eval()
    _randomise(model, torch.Generator().manual_seed(1))
    return model


@pytest.fixture
def hf_model() -> KimiLinearForCausalLM:
    return _hf_model()


# MLA layers with the query projected directly (Kimi) or through a low-rank q_a/q_b pair.
@pytest.fixture(params=[None, 24], ids=["q_proj", "q_lora"])
def hf_mla_model(request: pytest.FixtureRequest) -> KimiLinearForCausalLM:
    return _hf_model(request.param)


def _ours(hf_model: KimiLinearForCausalLM, module: type[nn.Module], idx: int) -> nn.Module:
    config = KimiConfig.from_hf_dict(hf_model.config.to_dict())
    layer = hf_model.model.layers[idx]
    hf_module = layer.mlp if module in (KimiMLP, KimiMoE) else layer.self_attn
    ours = module(config).to(next(hf_module.parameters()).dtype).eval()
    ours.load_state_dict(hf_module.state_dict(), strict=True)
    return ours


def _hidden(num_tokens: int, seed: int = 2) -> Tensor:
    return torch.randn(num_tokens, HIDDEN, generator=torch.Generator().manual_seed(seed))


def _close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


# Config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"linear_attn_config": {"head_dim": 8, "num_heads": 2}, "num_hidden_layers": 9},
        # transformers' own attribute names, no linear_attn_config block
        {
            "linear_attn_config": None,
            "linear_head_dim": 8,
            "linear_num_heads": 2,
            "linear_conv_kernel_dim": 3,
            "layer_types": ["linear_attention", "full_attention"] * 2,
        },
        {"layer_types": ["full_attention", "linear_attention"] * 2, "first_k_dense_replace": 3},
        {"mlp_layer_types": ["sparse", "dense", "dense", "sparse"]},
    ],
)
def test_config_resolves_like_transformers(overrides: dict[str, object]) -> None:
    raw = {k: v for k, v in {**TINY, **overrides}.items() if v is not None}
    hf_config = KimiLinearConfig(**raw)
    for config in (KimiConfig.from_hf_dict(raw), KimiConfig.from_hf_dict(hf_config.to_dict())):
        assert list(config.layer_types) == hf_config.layer_types
        assert list(config.mlp_layer_types) == hf_config.mlp_layer_types
        assert config.linear_num_heads == hf_config.linear_num_heads
        assert config.linear_head_dim == hf_config.linear_head_dim
        assert config.linear_conv_kernel_dim == hf_config.linear_conv_kernel_dim
        assert config.num_local_experts == hf_config.num_local_experts
        assert config.num_experts_per_tok == hf_config.num_experts_per_tok
        assert config.n_group == hf_config.n_group


def test_config_rejects_a_bad_layer_pattern() -> None:
    with pytest.raises(ValueError, match="layer_types"):
        KimiConfig.from_hf_dict({**TINY, "layer_types": ["full_attention"] * 3})


# KDA -----------------------------------------------------------------------------------------


def _hf_kda(hf_model: KimiLinearForCausalLM, x: Tensor, cache: DynamicCache | None) -> Tensor:
    attn = hf_model.model.layers[KDA_LAYER].self_attn
    return attn(hidden_states=x[None], cache_params=cache)[0]


@torch.no_grad()
@pytest.mark.parametrize("num_tokens", [1, 5, 70])
def test_kda_prefill_matches_transformers(hf_model: KimiLinearForCausalLM, num_tokens: int) -> None:
    ours = _ours(hf_model, KimiDeltaAttention, KDA_LAYER)
    x = _hidden(num_tokens)
    out, state = ours(x, None)
    _close(out, _hf_kda(hf_model, x, None))
    assert state.recurrent.shape == (4, 16, 16) and state.recurrent.dtype == torch.float32
    assert state.q_conv.shape == state.k_conv.shape == state.v_conv.shape == (3, 64)


@torch.no_grad()
def test_kda_decode_with_state_carry_matches_transformers(
    hf_model: KimiLinearForCausalLM,
) -> None:
    ours = _ours(hf_model, KimiDeltaAttention, KDA_LAYER)
    x = _hidden(40)
    cache = DynamicCache(config=hf_model.config)
    expected = [_hf_kda(hf_model, x[:30], cache)]
    expected += [_hf_kda(hf_model, x[t : t + 1], cache) for t in range(30, 40)]
    out, state = ours(x[:30], None)
    outs = [out]
    for t in range(30, 40):
        out, state = ours(x[t : t + 1], state)
        outs.append(out)
    _close(torch.cat(outs), torch.cat(expected))
    _close(state.recurrent, cache.layers[KDA_LAYER].recurrent_states[0][0])


@torch.no_grad()
@pytest.mark.parametrize("split", [2, 64, 67])
def test_kda_split_prefill_equals_one_call(hf_model: KimiLinearForCausalLM, split: int) -> None:
    ours = _ours(hf_model, KimiDeltaAttention, KDA_LAYER)
    x = _hidden(100)
    out_all, state_all = ours(x, None)
    out1, state1 = ours(x[:split], None)
    out2, state2 = ours(x[split:], state1)
    _close(torch.cat([out1, out2]), out_all)
    for name in ("recurrent", "q_conv", "k_conv", "v_conv"):
        _close(getattr(state2, name), getattr(state_all, name))


@torch.no_grad()
def test_kda_does_not_modify_the_state_it_is_given(hf_model: KimiLinearForCausalLM) -> None:
    ours = _ours(hf_model, KimiDeltaAttention, KDA_LAYER)
    _, state = ours(_hidden(10), None)
    snapshot = KdaState(*(t.clone() for t in vars(state).values()))
    ours(_hidden(3, seed=5), state)
    ours(_hidden(1, seed=6), state)
    for name, t in vars(snapshot).items():
        assert torch.equal(getattr(state, name), t)


# MLA -----------------------------------------------------------------------------------------


def _hf_mla(hf_model: KimiLinearForCausalLM, x: Tensor, cache: DynamicCache | None) -> Tensor:
    # A single query or a fresh prefill: transformers' sdpa path needs no mask.
    attn = hf_model.model.layers[MLA_LAYER].self_attn
    return attn(hidden_states=x[None], attention_mask=None, past_key_values=cache)[0][0]


@torch.no_grad()
@pytest.mark.parametrize("num_tokens", [1, 9, 70])
def test_mla_prefill_matches_transformers(
    hf_mla_model: KimiLinearForCausalLM, num_tokens: int
) -> None:
    ours = _ours(hf_mla_model, KimiMLAttention, MLA_LAYER)
    x = _hidden(num_tokens)
    cache = DynamicCache(config=hf_mla_model.config)
    expected = _hf_mla(hf_mla_model, x, cache)
    out, latent = ours(x, None)
    _close(out, expected)
    # The latent rows are what transformers caches: normalised c_kv and the shared key part.
    hf_layer = cache.layers[MLA_LAYER]
    _close(latent, torch.cat([hf_layer.keys[0, 0], hf_layer.values[0, 0]], dim=-1))
    assert latent.shape == (num_tokens, 16 + 8)


@torch.no_grad()
def test_mla_decode_with_past_latent_matches_transformers(
    hf_mla_model: KimiLinearForCausalLM,
) -> None:
    ours = _ours(hf_mla_model, KimiMLAttention, MLA_LAYER)
    x = _hidden(40)
    cache = DynamicCache(config=hf_mla_model.config)
    expected = [_hf_mla(hf_mla_model, x[:30], cache)]
    expected += [_hf_mla(hf_mla_model, x[t : t + 1], cache) for t in range(30, 40)]
    out, latent = ours(x[:30], None)
    outs, rows = [out], [latent]
    for t in range(30, 40):
        out, latent = ours(x[t : t + 1], torch.cat(rows))
        outs.append(out)
        rows.append(latent)
    _close(torch.cat(outs), torch.cat(expected))


@torch.no_grad()
@pytest.mark.parametrize("split", [1, 17])
def test_mla_split_prefill_equals_one_call(hf_mla_model: KimiLinearForCausalLM, split: int) -> None:
    ours = _ours(hf_mla_model, KimiMLAttention, MLA_LAYER)
    x = _hidden(30)
    out_all, latent_all = ours(x, None)
    out1, latent1 = ours(x[:split], None)
    out2, latent2 = ours(x[split:], latent1)
    _close(torch.cat([out1, out2]), out_all)
    _close(torch.cat([latent1, latent2]), latent_all)


@torch.no_grad()
@pytest.mark.parametrize(("num_tokens", "num_past"), [(1, 0), (1, 40), (5, 20), (30, 0)])
def test_mla_absorbed_equals_expanded(
    hf_mla_model: KimiLinearForCausalLM, num_tokens: int, num_past: int
) -> None:
    ours = _ours(hf_mla_model, KimiMLAttention, MLA_LAYER)
    assert isinstance(ours, KimiMLAttention)
    x = _hidden(num_past + num_tokens)
    _, past = ours(x[:num_past], None)
    num_rows = num_past + num_tokens
    q = ours._query(x[num_past:]).view(num_tokens, 4, 24)
    rows = torch.cat([past, ours.latent(x[num_past:])])
    visible = torch.ones(num_tokens, num_rows, dtype=torch.bool).tril(diagonal=num_past)
    _close(ours._attend_absorbed(q, rows, visible), ours._attend_expanded(q, rows, visible))
    # Decode steps take the absorbed form, long prefills the expanded one.
    assert ours.absorbed_is_cheaper(1, 40)
    assert not ours.absorbed_is_cheaper(70, 70)


# MLP -----------------------------------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize(("module", "idx"), [(KimiMLP, DENSE_LAYER), (KimiMoE, MOE_LAYER)])
def test_mlp_matches_transformers(
    hf_model: KimiLinearForCausalLM, module: type[nn.Module], idx: int
) -> None:
    ours = _ours(hf_model, module, idx)
    x = _hidden(50)
    _close(ours(x), hf_model.model.layers[idx].mlp(x[None])[0])


@torch.no_grad()
def test_zero_tokens_is_a_no_op(hf_model: KimiLinearForCausalLM) -> None:
    kda = _ours(hf_model, KimiDeltaAttention, KDA_LAYER)
    _, state = kda(_hidden(5), None)
    out, same = kda(_hidden(0), state)
    assert out.shape == (0, HIDDEN)
    for name, t in vars(state).items():
        assert torch.equal(getattr(same, name), t)
    mla = _ours(hf_model, KimiMLAttention, MLA_LAYER)
    out, latent = mla(_hidden(0), None)
    assert out.shape == (0, HIDDEN) and latent.shape == (0, 24)
    assert _ours(hf_model, KimiMoE, MOE_LAYER)(_hidden(0)).shape == (0, HIDDEN)


@torch.no_grad()
def test_bfloat16_layers_follow_transformers_casts() -> None:
    hf_model = copy.deepcopy(_hf_model()).to(torch.bfloat16)
    x = _hidden(40).to(torch.bfloat16)
    kda = _ours(hf_model, KimiDeltaAttention, KDA_LAYER)
    out, state = kda(x[:39], None)
    step, state = kda(x[39:], state)
    assert out.dtype == step.dtype == torch.bfloat16
    assert state.recurrent.dtype == torch.float32 and state.q_conv.dtype == torch.bfloat16
    cache = DynamicCache(config=hf_model.config)
    expected = torch.cat([_hf_kda(hf_model, x[:39], cache), _hf_kda(hf_model, x[39:], cache)])
    # Same casts at the same points: bitwise equal on this machine; allow one bfloat16 ulp
    # (2^-7 relative) for float32 sums rounded differently before a cast.
    torch.testing.assert_close(torch.cat([out, step]), expected, atol=1e-2, rtol=1e-2)
    mla = _ours(hf_model, KimiMLAttention, MLA_LAYER)
    out, latent = mla(x, None)
    assert latent.dtype == torch.bfloat16
    expected = hf_model.model.layers[MLA_LAYER].self_attn(x[None], attention_mask=None)[0][0]
    torch.testing.assert_close(out, expected, atol=1e-2, rtol=1e-2)
