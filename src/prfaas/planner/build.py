"""From a validated ``PlanConfig`` to profiles, a workload and deployments, then the plans."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prfaas.planner.config import PlanConfig, PlanConfigError, ProfileSection
from prfaas.planner.deployments import (
    Deployment,
    HomogeneousPd,
    NaiveHeterogeneous,
    PlanResult,
    PrfaasPd,
)
from prfaas.planner.efficiency import CALIBRATED
from prfaas.planner.hardware import get_gpu
from prfaas.planner.model import load_planner_model
from prfaas.planner.profile import (
    EfficiencyProfile,
    PrefillProfile,
    RooflineProfile,
    ScaledProfile,
    TableProfile,
)
from prfaas.planner.roofline import Instance
from prfaas.planner.search import plan
from prfaas.planner.throughput import DecodeSpec
from prfaas.planner.trace import incremental_lengths, load_mooncake_trace
from prfaas.planner.units import MIB
from prfaas.planner.workload import EmpiricalLengths, LengthDistribution, TruncatedLogNormal


@dataclass(frozen=True)
class PlanInputs:
    profiles: dict[str, PrefillProfile]
    workload: LengthDistribution
    output_tokens: float
    deployments: tuple[Deployment, ...]
    threshold_step_tokens: float


def build_inputs(config: PlanConfig, base_dir: Path = Path(".")) -> PlanInputs:
    profiles: dict[str, PrefillProfile] = {}
    for name in config.profiles:
        _build_profile(name, config.profiles, profiles, stack=())
    workload, output_tokens = _build_workload(config, base_dir)
    decode = {
        name: DecodeSpec(section.max_batch_size, section.step_s)
        for name, section in config.decode.items()
    }
    bandwidth_gbps = config.link.bandwidth_gbps if config.link is not None else 0.0
    deployments: list[Deployment] = []
    for i, dep in enumerate(config.deployments):
        if dep.prfaas is not None:
            _require_kv_sizes(
                f"deployments.{i}.prfaas.prefill_profile",
                dep.prfaas.prefill_profile,
                profiles[dep.prfaas.prefill_profile],
            )
        pd_prefill = profiles[dep.pd.prefill_profile] if dep.pd.prefill_profile else None
        if dep.kind == "prfaas_pd":
            assert dep.prfaas is not None and pd_prefill is not None
            deployments.append(
                PrfaasPd(
                    dep.name,
                    dep.prfaas.instances,
                    profiles[dep.prfaas.prefill_profile],
                    dep.pd.instances,
                    pd_prefill,
                    decode[dep.pd.decode],
                    bandwidth_gbps,
                )
            )
        elif dep.kind == "homogeneous_pd":
            assert pd_prefill is not None
            deployments.append(
                HomogeneousPd(dep.name, dep.pd.instances, pd_prefill, decode[dep.pd.decode])
            )
        else:
            assert dep.prfaas is not None
            deployments.append(
                NaiveHeterogeneous(
                    dep.name,
                    dep.prfaas.instances,
                    profiles[dep.prfaas.prefill_profile],
                    dep.pd.instances,
                    decode[dep.pd.decode],
                    bandwidth_gbps,
                )
            )
    return PlanInputs(
        profiles,
        workload,
        output_tokens,
        tuple(deployments),
        float(config.search.threshold_step_tokens),
    )


def _require_kv_sizes(key: str, name: str, profile: PrefillProfile) -> None:
    """The link term of eq. 3 needs S_kv(l) from the PrfaaS profile."""
    try:
        profile.kv_bytes(np.array([1.0]))
    except ValueError:
        raise PlanConfigError(
            f"{key}: profile {name!r} has no KV sizes; give kv_mib on every row"
        ) from None


def run_plans(inputs: PlanInputs) -> list[PlanResult]:
    return [
        plan(dep, inputs.workload, inputs.output_tokens, inputs.threshold_step_tokens)
        for dep in inputs.deployments
    ]


def _build_profile(
    name: str,
    sections: dict[str, ProfileSection],
    built: dict[str, PrefillProfile],
    stack: tuple[str, ...],
) -> PrefillProfile:
    if name in built:
        return built[name]
    if name in stack:
        raise PlanConfigError(f"profiles.{name}.scale_of: cycle {' -> '.join((*stack, name))}")
    section = sections[name]
    profile: PrefillProfile
    try:
        if section.points is not None:
            rows = section.points
            kv = [r.kv_mib for r in rows]
            profile = TableProfile(
                num_tokens=tuple(float(r.num_tokens) for r in rows),
                prefill_times_s=tuple(r.prefill_s for r in rows),
                kv_sizes_bytes=None if None in kv else tuple(float(k or 0) * MIB for k in kv),
                fit=section.fit,
                degree=section.degree,
            )
        elif section.scale_of is not None:
            assert section.anchors is not None
            base = _build_profile(section.scale_of, sections, built, (*stack, name))
            anchors = [(float(a.num_tokens), a.prefill_s) for a in section.anchors]
            profile = ScaledProfile.fit_to(base, anchors)
        elif section.roofline is not None:
            r = section.roofline
            instance = Instance(
                get_gpu(r.gpu), r.gpus_per_instance, r.mfu, r.mbu, r.weight_bytes_per_param
            )
            profile = RooflineProfile(load_planner_model(r.model), instance)
        else:
            assert section.efficiency is not None
            e = section.efficiency
            instance = Instance(
                get_gpu(e.gpu), e.gpus_per_instance, weight_bytes_per_param=e.weight_bytes_per_param
            )
            profile = EfficiencyProfile(load_planner_model(e.model), instance, CALIBRATED)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise PlanConfigError(f"profiles.{name}: {exc}") from None
    built[name] = profile
    return profile


def _build_workload(config: PlanConfig, base_dir: Path) -> tuple[LengthDistribution, float]:
    section = config.workload
    if section.lognormal is not None:
        ln = section.lognormal
        assert section.output_tokens is not None
        workload = TruncatedLogNormal(ln.mu, ln.sigma, ln.min_tokens, ln.max_tokens)
        return workload, section.output_tokens
    assert section.trace is not None
    trace = section.trace
    path = Path(trace.path)
    if not path.is_absolute():
        path = base_dir / path
    try:
        requests = load_mooncake_trace(path)
        lengths = incremental_lengths(
            requests, trace.prefix_cache, trace.block_tokens, trace.capacity_blocks
        )
    except (OSError, ValueError) as exc:
        raise PlanConfigError(f"workload.trace: {exc}") from None
    output_tokens = section.output_tokens
    if output_tokens is None:
        output_tokens = sum(r.output_length for r in requests) / len(requests)
    return EmpiricalLengths(tuple(lengths)), output_tokens
