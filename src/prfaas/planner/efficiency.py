"""Prefill time with a length-dependent efficiency model, calibrated on published timings.

The roofline (``roofline.py``) divides FLOPs by one utilization. Measured prefill times do not
scale that way: a 1K-token prefill of the paper's 1T model takes 0.44 s on 8xH200 where its
FLOPs need < 0.01 s at peak, and an 8xH20 instance (1/6.7 of an H200's FLOP/s) is only ~3x
slower per token (marginal time per token, 8K-32K on H200 against 10.2K-27.5K on H20). This
model keeps the FLOP counts of ``PlannerModel`` and adds what the measurements show:

    T(l) = overhead_s                                  fixed cost per prefill (launch, sync)
         + max(F_gemm(l) / (P η_gemm),  W / (G B mbu)) weight GEMMs, floored by one weight read
         + per_token_layer_s · l · n_layers / G        per-token work that does not scale with
                                                       FLOP/s (routing, permutes, norms, comms),
                                                       spread over the instance's G GPUs
         + F_attn(l) / (P η_attn(l))                   softmax attention, η_attn(l) =
                                                       attention · l / (l + attention_half_tokens)
         + F_lin(l) / (P linear)                       linear-attention kernels

P = GPUs x peak bf16 FLOP/s, B the HBM bandwidth per GPU, W the weight bytes. Attention's
efficiency rises with length (short sequences fill few tiles); the GEMMs' is constant once the
weight read is amortised. ``calibration.py`` fits the constants and reports the error.
"""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.planner.model import PlannerModel
from prfaas.planner.roofline import Instance


@dataclass(frozen=True)
class Efficiency:
    """The model's constants; ``CALIBRATED`` holds the fitted ones."""

    overhead_s: float
    gemm: float  # achieved / peak FLOP/s of the weight GEMMs
    per_token_layer_s: float  # GPU-seconds per token per layer
    attention: float  # attention's achieved / peak FLOP/s at long lengths
    attention_half_tokens: float  # length at which attention reaches half of that
    linear: float  # linear-attention kernels' achieved / peak FLOP/s
    mbu: float = 0.7  # achieved / peak HBM bandwidth for the weight read

    def __post_init__(self) -> None:
        for name in ("gemm", "attention", "linear", "mbu"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"efficiency {name} must lie in (0, 1], got {value}")
        if min(self.overhead_s, self.per_token_layer_s, self.attention_half_tokens) < 0:
            raise ValueError("overhead_s, per_token_layer_s, attention_half_tokens must be >= 0")


@dataclass(frozen=True)
class PrefillTerms:
    """Each term of T(l) at efficiency 1, in seconds (``Efficiency`` divides them)."""

    gemm_s: float
    weight_read_s: float
    token_layers_per_gpu: float  # l x n_layers / G
    attention_s: float  # already scaled by (l + half) / l
    linear_s: float


def prefill_terms(
    model: PlannerModel, instance: Instance, num_tokens: float, attention_half_tokens: float
) -> PrefillTerms:
    peak = instance.gpus_per_instance * instance.gpu.bf16_flops
    bandwidth = instance.gpus_per_instance * instance.gpu.memory_bandwidth_bytes_per_s
    length_factor = (num_tokens + attention_half_tokens) / num_tokens
    return PrefillTerms(
        gemm_s=model.gemm_flops_per_token() * num_tokens / peak,
        weight_read_s=model.total_params * instance.weight_bytes_per_param / bandwidth,
        token_layers_per_gpu=num_tokens * model.num_layers / instance.gpus_per_instance,
        attention_s=model.attention_flops(num_tokens) / peak * length_factor,
        linear_s=model.linear_flops(num_tokens) / peak,
    )


def efficiency_prefill_s(
    model: PlannerModel, instance: Instance, efficiency: Efficiency, num_tokens: float
) -> float:
    """Estimated time to prefill ``num_tokens`` uncached tokens on one instance."""
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    t = prefill_terms(model, instance, num_tokens, efficiency.attention_half_tokens)
    return (
        efficiency.overhead_s
        + max(t.gemm_s / efficiency.gemm, t.weight_read_s / efficiency.mbu)
        + efficiency.per_token_layer_s * t.token_layers_per_gpu
        + t.attention_s / efficiency.attention
        + t.linear_s / efficiency.linear
    )


# ``calibration.calibrate_published()`` on the paper's 8xH200 Table 5 (1K, 32K, 128K) and the
# derived 8xH20 point at 27.5K; re-derived in tests/planner/test_efficiency.py. Errors on the
# held-out rows and the assumptions behind the fixed constants: docs/planner.md.
CALIBRATED = Efficiency(
    overhead_s=0.3323,
    gemm=0.5803,
    per_token_layer_s=3.903e-6,
    attention=0.4601,
    attention_half_tokens=1024.0,
    linear=0.1,
    mbu=0.7,
)
