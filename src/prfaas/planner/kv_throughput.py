"""`prfaas kv-throughput`: S_kv(l), T_prefill(l) and Φ_kv(l) rows for one model and instance.

T_prefill comes from a measured profile file when given, else from the calibrated efficiency
model (default) or the roofline at an explicit MFU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prfaas.planner.efficiency import CALIBRATED
from prfaas.planner.hardware import get_gpu
from prfaas.planner.model import load_planner_model
from prfaas.planner.profile import EfficiencyProfile, PrefillProfile, RooflineProfile
from prfaas.planner.profile_file import read_profile_file
from prfaas.planner.report import format_table
from prfaas.planner.roofline import Instance
from prfaas.planner.units import MIB, bytes_per_s_to_gbps


def kv_throughput_rows(
    model_name: str,
    lengths: list[int],
    *,
    gpu: str | None,
    gpus_per_instance: int,
    estimate: str,
    mfu: float,
    profile_path: Path | None,
    instances: int | None,
) -> tuple[str, list[dict[str, Any]]]:
    """(title naming the T_prefill source, one row per length)."""
    model = load_planner_model(model_name)
    profile: PrefillProfile
    if profile_path is not None:
        profile = read_profile_file(profile_path)
        source = f"measured profile {profile_path}"
        where = f"{model.name}, T_prefill from {source}"
    else:
        if gpu is None:
            raise ValueError("--gpu is required without --profile")
        instance = Instance(get_gpu(gpu), gpus_per_instance, mfu=mfu)
        if estimate == "roofline":
            profile = RooflineProfile(model, instance)
            source = f"roofline estimate, MFU {mfu:g}; a measured profile overrides it"
        elif estimate == "efficiency":
            profile = EfficiencyProfile(model, instance, CALIBRATED)
            source = (
                "efficiency model calibrated on the paper's 8xH200/8xH20 timings; "
                "see --calibration; a measured profile overrides it"
            )
        else:
            raise ValueError(f"unknown estimate {estimate!r}")
        where = f"{model.name} on {gpus_per_instance}x{gpu} ({source})"
    times = profile.prefill_s(np.asarray(lengths, dtype=np.float64))
    rows: list[dict[str, Any]] = []
    for num_tokens, time_s in zip(lengths, times.tolist(), strict=True):
        if time_s <= 0:
            raise ValueError(f"T_prefill({num_tokens}) = {time_s:.3g} s: outside the profile")
        kv_bytes = model.kv_bytes(num_tokens)
        row: dict[str, Any] = {
            "num_tokens": num_tokens,
            "kv_bytes": kv_bytes,
            "kv_mib": kv_bytes / MIB,
            "prefill_s": time_s,
            "kv_throughput_gbps": bytes_per_s_to_gbps(kv_bytes / time_s),
        }
        if instances is not None:
            row["cluster_egress_gbps"] = instances * row["kv_throughput_gbps"]
        rows.append(row)
    return where, rows


def print_kv_table(title: str, rows: list[dict[str, Any]], instances: int | None) -> None:
    headers = ["length", "S_kv (MiB)", "T_prefill (s)", "Φ_kv (Gbps)"]
    if instances is not None:
        headers.append(f"egress x{instances} (Gbps)")
    table_rows = []
    for row in rows:
        cells = [
            str(row["num_tokens"]),
            f"{row['kv_mib']:.1f}",
            f"{row['prefill_s']:.3f}",
            f"{row['kv_throughput_gbps']:.2f}",
        ]
        if instances is not None:
            cells.append(f"{row['cluster_egress_gbps']:.1f}")
        table_rows.append(cells)
    print(title)
    print(format_table(headers, table_rows))
