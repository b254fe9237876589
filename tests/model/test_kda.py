"""KDA math: chunked form == recurrence == transformers' torch fallbacks; state carry is exact."""

from __future__ import annotations

import pytest
import torch
from transformers.models.kimi_linear import modeling_kimi_linear as hf

from prfaas.model.kda import (
    SAFE_LOG_RANGE,
    causal_conv1d,
    decayed_gram,
    kda_chunked,
    kda_recurrent,
    unit_lower_inverse,
    without_read_backs,
)
from tests.host_reads import count_host_reads

Tensor = torch.Tensor
ATOL = 1e-5


# Tiny tensors: intra-op threads only add synchronisation (and stall on shared cores).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(
    num_tokens: int,
    max_step_decay: float = 0.3,
    batch: int | None = None,
    heads: int = 3,
    head_k_dim: int = 16,
    head_v_dim: int = 12,
    seed: int = 0,
) -> dict[str, Tensor]:
    """q, k, v, g (log decay in [-max_step_decay, 0]), beta and a non-zero initial state."""
    gen = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    qk_shape = (*lead, num_tokens, heads, head_k_dim)
    return {
        "q": torch.randn(qk_shape, generator=gen),
        "k": torch.randn(qk_shape, generator=gen),
        "v": torch.randn((*lead, num_tokens, heads, head_v_dim), generator=gen),
        "g": -max_step_decay * torch.rand(qk_shape, generator=gen),
        "beta": torch.rand((*lead, num_tokens, heads), generator=gen),
        "initial_state": torch.randn((*lead, heads, head_k_dim, head_v_dim), generator=gen),
    }


def _close(a: Tensor, b: Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


@pytest.mark.parametrize("num_tokens", [1, 7, 63, 64, 65, 130, 200])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunked_equals_recurrence(num_tokens: int, chunk_size: int) -> None:
    x = _inputs(num_tokens)
    o_ref, s_ref = kda_recurrent(**x)
    o, s = kda_chunked(**x, chunk_size=chunk_size)
    _close(o, o_ref)
    _close(s, s_ref)


@pytest.mark.parametrize("max_step_decay", [0.01, 2.0, 8.0, 40.0])
def test_chunked_equals_recurrence_for_any_decay(max_step_decay: float) -> None:
    # From one matmul per chunk (mild) down to every recursion level (40 nats per step).
    x = _inputs(150, max_step_decay=max_step_decay)
    o_ref, s_ref = kda_recurrent(**x)
    o, s = kda_chunked(**x)
    assert torch.isfinite(o).all()
    _close(o, o_ref)
    _close(s, s_ref)


def test_chunked_equals_recurrence_with_fast_and_slow_heads() -> None:
    # Head 0 decays mildly (one matmul per chunk), heads 1-2 strongly (recursive halving).
    x = _inputs(150, max_step_decay=1.0)
    x["g"] = x["g"] * torch.tensor([0.1, 5.0, 30.0])[:, None]
    o_ref, s_ref = kda_recurrent(**x)
    o, s = kda_chunked(**x)
    _close(o, o_ref)
    _close(s, s_ref)


def test_chunked_without_initial_state_and_small_steps() -> None:
    x = _inputs(300)
    x["initial_state"] = None  # type: ignore[assignment]
    o_ref, s_ref = kda_recurrent(**x)
    o, s = kda_chunked(**x, step_elems=1)  # one chunk per step
    _close(o, o_ref)
    _close(s, s_ref)


@pytest.mark.parametrize("num_tokens", [70, 128])
def test_batched_equals_each_sequence(num_tokens: int) -> None:
    x = _inputs(num_tokens, batch=2)
    o, s = kda_chunked(**x, chunk_size=32, step_elems=1)  # several steps over strided slices
    for b in range(2):
        o_b, s_b = kda_recurrent(**{name: t[b] for name, t in x.items()})
        _close(o[b], o_b)
        _close(s[b], s_b)


@pytest.mark.parametrize("split", [1, 50, 64, 99])
def test_split_with_state_carry_equals_one_call(split: int) -> None:
    x = _inputs(130)
    o_all, s_all = kda_chunked(**x)
    first = {name: t[:split] for name, t in x.items() if name != "initial_state"}
    rest = {name: t[split:] for name, t in x.items() if name != "initial_state"}
    o1, s1 = kda_chunked(**first, initial_state=x["initial_state"])
    # The continuation mixes decode steps (recurrence) and a chunked prefill.
    o2, s2 = kda_recurrent(**{name: t[:2] for name, t in rest.items()}, initial_state=s1)
    o3, s3 = kda_chunked(**{name: t[2:] for name, t in rest.items()}, initial_state=s2)
    _close(torch.cat([o1, o2, o3]), o_all)
    _close(s3, s_all)


@pytest.mark.parametrize("chunk_size", [0, 48])
def test_chunk_size_must_be_a_power_of_two(chunk_size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        kda_chunked(**_inputs(10), chunk_size=chunk_size)


def test_empty_sequence_keeps_state() -> None:
    x = _inputs(0)
    for fn in (kda_recurrent, kda_chunked):
        o, s = fn(**x)
        assert o.shape == (0, 3, 12)
        _close(s, x["initial_state"])


def test_dtypes_output_follows_q_state_is_float32() -> None:
    x = _inputs(40)
    half = {name: t.to(torch.bfloat16) for name, t in x.items() if name != "initial_state"}
    for fn in (kda_recurrent, kda_chunked):
        o, s = fn(**half, initial_state=x["initial_state"])
        assert o.dtype == torch.bfloat16
        assert s.dtype == torch.float32


@pytest.mark.parametrize("num_tokens", [1, 33, 100])
def test_matches_transformers_fallbacks(num_tokens: int) -> None:
    x = _inputs(num_tokens, batch=2)
    args = (x["q"], x["k"], x["v"])
    o_rec, s_rec = kda_recurrent(**x)
    o_chunk, s_chunk = kda_chunked(**x)
    hf_rec = hf.recurrent_kimi_delta_attention(
        *args, g=x["g"], beta=x["beta"], initial_state=x["initial_state"].clone(),
        output_final_state=True, use_qk_l2norm_in_kernel=True,
    )  # fmt: skip
    hf_chunk = hf.chunk_kimi_delta_attention(
        *args, g=x["g"], beta=x["beta"], initial_state=x["initial_state"].clone(),
        output_final_state=True, use_qk_l2norm_in_kernel=True,
    )  # fmt: skip
    for o, s in ((o_rec, s_rec), (o_chunk, s_chunk)):
        for o_hf, s_hf in (hf_rec, hf_chunk):
            _close(o, o_hf)
            _close(s, s_hf)


def test_without_l2norm_and_custom_scale_matches_transformers_recurrence() -> None:
    x = _inputs(20, batch=1)
    x["q"] = x["q"] * x["q"].shape[-1] ** 0.5 * 0.3  # transformers always scales by dim^-0.5
    o_hf, s_hf = hf.recurrent_kimi_delta_attention(
        x["q"], x["k"] * 0.2, x["v"], g=x["g"], beta=x["beta"],
        initial_state=x["initial_state"].clone(), output_final_state=True,
    )  # fmt: skip
    ours = {**x, "q": x["q"] * x["q"].shape[-1] ** -0.5, "k": x["k"] * 0.2}
    for fn in (kda_recurrent, kda_chunked):
        o, s = fn(**ours, scale=1.0, use_qk_l2norm=False)
        _close(o, o_hf)
        _close(s, s_hf)


def _naive_gram(x: Tensor, y: Tensor, g_cum: Tensor) -> Tensor:
    x, y, g_cum = x.double(), y.double(), g_cum.double()
    decay = torch.exp(g_cum[..., :, None, :] - g_cum[..., None, :, :])  # (..., a, b, dim)
    m = (x[..., :, None, :] * y[..., None, :, :] * decay).sum(-1)
    return m.tril(-1).float()


@pytest.mark.parametrize("max_step_decay", [0.1, 3.0, 25.0, 100.0])
def test_decayed_gram_is_exact_where_a_single_factorisation_overflows(
    max_step_decay: float,
) -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 3, 32, 8, generator=gen).unbind(0)
    g_cum = (-max_step_decay * torch.rand(3, 32, 8, generator=gen)).cumsum(-2)
    if max_step_decay >= 25.0:
        assert float(-g_cum.min()) > SAFE_LOG_RANGE  # a single factorisation would overflow
    m = decayed_gram(x, y, g_cum)
    assert torch.isfinite(m).all()
    _close(m, _naive_gram(x, y, g_cum))


def test_unit_lower_inverse() -> None:
    gen = torch.Generator().manual_seed(2)
    lower = (0.3 * torch.randn(4, 64, 64, generator=gen)).tril(-1)
    expected = torch.linalg.inv(torch.eye(64) + lower.double()).float()
    _close(unit_lower_inverse(lower), expected, atol=1e-4)


# Short conv ---------------------------------------------------------------------------------


def _conv_inputs(num_tokens: int, channels: int = 10, kernel: int = 4) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(num_tokens, channels, generator=gen)
    weight = torch.randn(channels, kernel, generator=gen)
    bias = torch.randn(channels, generator=gen)
    return x, weight, bias


@pytest.mark.parametrize("use_bias", [False, True])
def test_conv_matches_transformers(use_bias: bool) -> None:
    x, weight, bias = _conv_inputs(20)
    b = bias if use_bias else None
    y, state = causal_conv1d(x, weight, b, None)
    # transformers: channels-first (batch, channels, num_tokens)
    y_hf = hf.causal_conv1d_fn(x.T[None], weight, b, activation="silu")[0].T
    _close(y, y_hf)
    _close(state, x[-3:])


def test_conv_decode_matches_transformers_update() -> None:
    x, weight, _ = _conv_inputs(12)
    _, state = causal_conv1d(x[:8], weight, None, None)
    hf_state = torch.cat([torch.zeros(10, 1), x[:8].T[:, -3:]], dim=1)[None]  # kernel-wide
    for t in range(8, 12):
        y, state = causal_conv1d(x[t : t + 1], weight, None, state)
        y_hf = hf.causal_conv1d_update(x[t : t + 1].T[None], hf_state, weight, activation="silu")
        _close(y, y_hf[0].T)
        _close(state, hf_state[0, :, 1:].T)


@pytest.mark.parametrize("split", [1, 2, 5, 13])
def test_conv_split_with_state_carry_equals_one_call(split: int) -> None:
    x, weight, bias = _conv_inputs(16)
    y_all, s_all = causal_conv1d(x, weight, bias, None)
    y1, s1 = causal_conv1d(x[:split], weight, bias, None)
    y2, s2 = causal_conv1d(x[split:], weight, bias, s1)
    _close(torch.cat([y1, y2]), y_all)
    _close(s2, s_all)


def test_conv_state_of_a_short_prefix_keeps_leading_zeros() -> None:
    x, weight, _ = _conv_inputs(2)
    _, state = causal_conv1d(x, weight, None, None)
    _close(state, torch.cat([torch.zeros(1, 10), x]))


def test_runs_with_autograd_enabled() -> None:
    x = _inputs(100, max_step_decay=8.0)  # exercises the recursive gram too
    leaves = {name: t.requires_grad_() for name, t in x.items()}
    o, s = kda_chunked(**leaves)
    assert o.requires_grad
    with torch.no_grad():
        o_ref, s_ref = kda_recurrent(**x)
    _close(o.detach(), o_ref)
    _close(s.detach(), s_ref)


@pytest.mark.parametrize("max_step_decay", [0.01, 8.0, 40.0])
def test_path_without_read_backs_is_exact_and_reads_nothing(max_step_decay: float) -> None:
    # The accelerator's path (no decay read back to pick a shortcut), run on the CPU.
    x = _inputs(150, max_step_decay=max_step_decay)
    x["g"] = x["g"] * torch.tensor([0.1, 1.0, 3.0])[:, None]
    o_ref, s_ref = kda_recurrent(**x)
    with without_read_backs(), count_host_reads() as reads:
        o, s = kda_chunked(**x)
    assert reads == []
    _close(o, o_ref)
    _close(s, s_ref)
