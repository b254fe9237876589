"""GPU catalog: dense bf16 FLOP/s, memory bandwidth and capacity, each with its source.

Peak numbers are the vendor's dense (no 2:4 sparsity) tensor-core bf16 figures for the SXM/OAM
part; achievable throughput is peak times an explicit utilization (MFU/MBU) chosen by the user.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    name: str
    bf16_flops: float  # dense, FLOP/s
    memory_bandwidth_bytes_per_s: float
    memory_bytes: float
    source: str


_TB = 1e12
_GB = 1e9

GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        GpuSpec(
            "h200",
            989e12,
            4.8 * _TB,
            141 * _GB,
            "NVIDIA H200 Tensor Core GPU datasheet (SXM): 1,979 TFLOPS bf16 with sparsity, "
            "4.8 TB/s HBM3e, 141 GB",
        ),
        GpuSpec(
            "h100",
            989e12,
            3.35 * _TB,
            80 * _GB,
            "NVIDIA H100 Tensor Core GPU datasheet (SXM5): 1,979 TFLOPS bf16 with sparsity, "
            "3.35 TB/s HBM3, 80 GB",
        ),
        GpuSpec(
            "h800",
            989e12,
            3.35 * _TB,
            80 * _GB,
            "NVIDIA H800 SXM5 (H100 compute, reduced NVLink): same tensor-core peak as H100",
        ),
        GpuSpec(
            "gh200",
            989e12,
            4.0 * _TB,
            96 * _GB,
            "NVIDIA GH200 Grace Hopper Superchip datasheet: H100 tensor cores (989 TFLOPS bf16 "
            "dense), 96 GB HBM3 at 4 TB/s (the 144 GB HBM3e part: 4.9 TB/s)",
        ),
        GpuSpec(
            "h20",
            148e12,
            4.0 * _TB,
            96 * _GB,
            "NVIDIA H20 product brief: 148 TFLOPS bf16 dense, 4.0 TB/s HBM3, 96 GB",
        ),
        GpuSpec(
            "b200",
            2.25e15,
            8.0 * _TB,
            180 * _GB,
            "NVIDIA HGX B200 datasheet: 4.5 PFLOPS bf16 with sparsity (2.25 dense) per GPU, "
            "8 TB/s HBM3e, 180 GB usable",
        ),
        GpuSpec(
            "a100",
            312e12,
            2.039 * _TB,
            80 * _GB,
            "NVIDIA A100 datasheet (SXM4 80GB): 312 TFLOPS bf16 dense, 2,039 GB/s HBM2e",
        ),
        GpuSpec(
            "l40s",
            362e12,
            0.864 * _TB,
            48 * _GB,
            "NVIDIA L40S datasheet: 362.05 TFLOPS bf16 dense (733 with sparsity), 864 GB/s "
            "GDDR6, 48 GB",
        ),
        GpuSpec(
            "mi300x",
            1307e12,
            5.3 * _TB,
            192 * _GB,
            "AMD Instinct MI300X datasheet: 1,307.4 TFLOPS bf16 dense, 5.3 TB/s HBM3, 192 GB",
        ),
    )
}


def get_gpu(name: str) -> GpuSpec:
    key = name.lower()
    if key not in GPUS:
        raise KeyError(f"unknown GPU {name!r}; known: {', '.join(sorted(GPUS))}")
    return GPUS[key]
