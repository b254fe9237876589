"""Roofline estimates of prefill and decode-step time for a model on an instance of GPUs.

Time = max(FLOPs / (gpus x peak x MFU), bytes moved / (gpus x bandwidth x MBU)). MFU and MBU
are explicit assumptions, not measurements: a measured profile replaces this estimate.
Prefill moves the weights once; a decode step moves the weights plus every request's KV.
Ignored: communication between the instance's GPUs, kernel launch overheads, MoE imbalance.
"""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.planner.hardware import GpuSpec
from prfaas.planner.model import PlannerModel


@dataclass(frozen=True)
class Instance:
    gpu: GpuSpec
    gpus_per_instance: int
    mfu: float = 0.4  # achieved / peak dense bf16 FLOP/s during prefill
    mbu: float = 0.7  # achieved / peak memory bandwidth
    weight_bytes_per_param: float = 2.0  # bf16 weights; 1.0 for fp8

    def __post_init__(self) -> None:
        if self.gpus_per_instance < 1:
            raise ValueError("gpus_per_instance must be >= 1")
        if not (0 < self.mfu <= 1 and 0 < self.mbu <= 1):
            raise ValueError("mfu and mbu must lie in (0, 1]")

    @property
    def flops_per_s(self) -> float:
        return self.gpus_per_instance * self.gpu.bf16_flops * self.mfu

    @property
    def bytes_per_s(self) -> float:
        return self.gpus_per_instance * self.gpu.memory_bandwidth_bytes_per_s * self.mbu


def prefill_s(model: PlannerModel, instance: Instance, num_tokens: float) -> float:
    """Estimated time to prefill ``num_tokens`` uncached tokens on one instance."""
    compute_s = model.prefill_flops(num_tokens) / instance.flops_per_s
    weights_s = model.total_params * instance.weight_bytes_per_param / instance.bytes_per_s
    return max(compute_s, weights_s)


def decode_step_s(
    model: PlannerModel, instance: Instance, batch_size: int, context_tokens: int
) -> float:
    """Estimated time of one decode step for ``batch_size`` requests of ``context_tokens``."""
    compute_s = batch_size * model.decode_flops(context_tokens) / instance.flops_per_s
    moved_bytes = model.total_params * instance.weight_bytes_per_param
    moved_bytes += batch_size * model.kv_bytes(context_tokens)
    return max(compute_s, moved_bytes / instance.bytes_per_s)
