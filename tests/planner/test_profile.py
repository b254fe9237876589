"""Profiles, the roofline estimate and the model's FLOPs."""

import numpy as np
import pytest

from prfaas.planner.hardware import GPUS, get_gpu
from prfaas.planner.model import load_planner_model
from prfaas.planner.profile import RooflineProfile, ScaledProfile, TableProfile
from prfaas.planner.roofline import Instance, decode_step_s, prefill_s

TABLE5 = TableProfile(
    num_tokens=(1000.0, 8000.0, 32000.0, 128000.0),
    prefill_times_s=(0.44, 0.72, 1.84, 7.40),
    kv_sizes_bytes=tuple(m * 2**20 for m in (190.8, 308.9, 701.3, 2316.3)),
)


def test_quadratic_fit_is_least_squares_and_beats_interpolation_at_the_rows() -> None:
    x = np.array(TABLE5.num_tokens)
    residuals = TABLE5.prefill_s(x) - np.array(TABLE5.prefill_times_s)
    assert np.max(np.abs(residuals)) < 0.015
    # Least squares: residuals orthogonal to the design columns.
    design = np.stack([x**2, x, np.ones_like(x)], axis=1)
    assert np.allclose(design.T @ residuals, 0, atol=1e-6 * np.abs(design).max())
    interp = TableProfile(TABLE5.num_tokens, TABLE5.prefill_times_s, fit="interp")
    assert interp.prefill_s(x) == pytest.approx(TABLE5.prefill_times_s)
    assert interp.prefill_s(np.array([20000.0]))[0] == pytest.approx(0.72 + 0.5 * 1.12)
    assert interp.prefill_s(np.array([160000.0]))[0] == pytest.approx(7.40 + 32000 * 5.56 / 96000)


def test_kv_fit_is_affine_in_length() -> None:
    kv = TABLE5.kv_bytes(np.array([1000.0, 128000.0])) / 2**20
    assert kv == pytest.approx([190.8, 2316.3], rel=0.02)  # Table 5 is affine to ~1%


def test_scaled_profile_passes_through_two_anchors() -> None:
    h20 = ScaledProfile.fit_to(TABLE5, [(10200.0, 1.83), (27500.0, 4.27)])
    assert h20.prefill_s(np.array([10200.0, 27500.0])) == pytest.approx([1.83, 4.27])
    assert h20.kv_bytes(np.array([5000.0])) == pytest.approx(TABLE5.kv_bytes(np.array([5000.0])))


def test_bad_profiles_rejected() -> None:
    with pytest.raises(ValueError, match="degree"):
        TableProfile((1.0, 2.0), (1.0, 2.0), degree=2)
    with pytest.raises(ValueError, match="increasing"):
        TableProfile((2.0, 1.0), (1.0, 2.0), degree=1)


def test_gpu_catalog_has_sources_and_rejects_unknown() -> None:
    assert {"h200", "h100", "h20", "b200", "a100", "l40s"} <= set(GPUS)
    assert all(g.source and g.bf16_flops > 0 for g in GPUS.values())
    with pytest.raises(KeyError, match="known"):
        get_gpu("tpu9")


def test_roofline_prefill_scales_with_mfu_and_gpus() -> None:
    model = load_planner_model("llama-3.1-70b")
    slow = Instance(get_gpu("h200"), 8, mfu=0.2)
    fast = Instance(get_gpu("h200"), 8, mfu=0.4)
    n = 32768
    assert prefill_s(model, slow, n) == pytest.approx(2 * prefill_s(model, fast, n))
    # Compute bound at long lengths: FLOPs / (8 x 989e12 x 0.4).
    expected = model.prefill_flops(n) / (8 * 989e12 * 0.4)
    assert prefill_s(model, fast, n) == pytest.approx(expected)
    # Hand count of the attention term: 80 layers x 64 heads x (128 + 128) x n^2.
    gemm = model.gemm_flops_per_token() * n
    assert model.prefill_flops(n) - gemm == pytest.approx(80 * 64 * 256 * n * n)


def test_linear_layers_make_prefill_flops_grow_slower_than_full_attention() -> None:
    hybrid = load_planner_model("kimi-linear-48b")
    dense = load_planner_model("llama-3.1-8b")
    ratio_hybrid = hybrid.prefill_flops(131072) / hybrid.prefill_flops(8192)
    ratio_dense = dense.prefill_flops(131072) / dense.prefill_flops(8192)
    assert 16 < ratio_hybrid < ratio_dense


def test_decode_step_is_memory_bound_at_small_batch() -> None:
    model = load_planner_model("llama-3.1-8b")
    inst = Instance(get_gpu("h100"), 1, mbu=1.0)
    step = decode_step_s(model, inst, batch_size=1, context_tokens=1024)
    moved = model.total_params * 2 + model.kv_bytes(1024)
    assert step == pytest.approx(moved / 3.35e12)
    assert decode_step_s(model, inst, 64, 1024) > step


def test_roofline_profile_is_vectorized() -> None:
    prof = RooflineProfile(load_planner_model("smollm2-135m"), Instance(get_gpu("l40s"), 1))
    times = prof.prefill_s(np.array([1024.0, 4096.0]))
    assert times.shape == (2,) and times[1] > times[0]
    assert prof.kv_bytes(np.array([1024.0]))[0] == 30 * 1024 * 2 * 3 * 64 * 2
