"""The ``prfaas plan`` YAML file: frozen, validated sections, then the planner's objects.

Validation happens here, at the edge: unknown keys, wrong types or units and out-of-range
counts become one ``PlanConfigError`` whose message names each offending key by its path
(``deployments.0.pd.instances: ...``). Nothing past ``load_plan_config`` re-validates.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from prfaas.planner.units import parse_tokens

_STRICT = ConfigDict(extra="forbid")
Tokens = Annotated[int, BeforeValidator(parse_tokens), Field(gt=0)]
Positive = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=1)]


class PlanConfigError(ValueError):
    """A plan config that cannot be used; the message names the offending keys."""


@dataclass(frozen=True, config=_STRICT)
class ProfileRow:
    num_tokens: Tokens
    prefill_s: Positive
    kv_mib: Positive | None = None


@dataclass(frozen=True, config=_STRICT)
class RooflineSection:
    model: str
    gpu: str
    gpus_per_instance: Count = 8
    mfu: Annotated[float, Field(gt=0, le=1)] = 0.4
    mbu: Annotated[float, Field(gt=0, le=1)] = 0.7
    weight_bytes_per_param: Positive = 2.0


@dataclass(frozen=True, config=_STRICT)
class EfficiencySection:
    """The calibrated efficiency model (``planner/efficiency.py``) for a model on GPUs."""

    model: str
    gpu: str
    gpus_per_instance: Count = 8
    weight_bytes_per_param: Positive = 2.0


@dataclass(frozen=True, config=_STRICT)
class ProfileSection:
    """Exactly one source: measured ``points``, ``scale_of`` + ``anchors``, ``roofline`` or
    ``efficiency``."""

    points: tuple[ProfileRow, ...] | None = None
    fit: Literal["poly", "interp"] = "poly"
    degree: Annotated[int, Field(ge=0)] = 2
    scale_of: str | None = None
    anchors: tuple[ProfileRow, ...] | None = None
    roofline: RooflineSection | None = None
    efficiency: EfficiencySection | None = None

    def __post_init__(self) -> None:
        sources = [self.points, self.scale_of, self.roofline, self.efficiency]
        if sum(source is not None for source in sources) != 1:
            raise ValueError(
                "give exactly one of points, scale_of (with anchors), roofline or efficiency"
            )
        if (self.scale_of is None) != (self.anchors is None):
            raise ValueError("scale_of and anchors go together")


@dataclass(frozen=True, config=_STRICT)
class DecodeSection:
    max_batch_size: Count
    step_s: Positive


@dataclass(frozen=True, config=_STRICT)
class LogNormalSection:
    mu: float
    sigma: Positive
    min_tokens: Tokens
    max_tokens: Tokens

    def __post_init__(self) -> None:
        if self.min_tokens >= self.max_tokens:
            raise ValueError("min_tokens must be < max_tokens")


@dataclass(frozen=True, config=_STRICT)
class TraceSection:
    path: str
    prefix_cache: Literal["none", "unbounded", "lru"] = "unbounded"
    block_tokens: Tokens = 512
    capacity_blocks: Count | None = None


@dataclass(frozen=True, config=_STRICT)
class WorkloadSection:
    """``output_tokens`` is L_out; with a trace it defaults to the trace's mean output."""

    lognormal: LogNormalSection | None = None
    trace: TraceSection | None = None
    output_tokens: Positive | None = None

    def __post_init__(self) -> None:
        if (self.lognormal is None) == (self.trace is None):
            raise ValueError("give exactly one of lognormal or trace")
        if self.lognormal is not None and self.output_tokens is None:
            raise ValueError("output_tokens is required with a lognormal workload")


@dataclass(frozen=True, config=_STRICT)
class LinkSection:
    bandwidth_gbps: Positive


@dataclass(frozen=True, config=_STRICT)
class SearchSection:
    threshold_step_tokens: Tokens = 50


@dataclass(frozen=True, config=_STRICT)
class PrfaasClusterSection:
    instances: Count
    prefill_profile: str


@dataclass(frozen=True, config=_STRICT)
class PdClusterSection:
    instances: Count
    decode: str
    prefill_profile: str | None = None


@dataclass(frozen=True, config=_STRICT)
class DeploymentSection:
    name: str
    kind: Literal["prfaas_pd", "homogeneous_pd", "naive_heterogeneous"]
    pd: PdClusterSection
    prfaas: PrfaasClusterSection | None = None

    def __post_init__(self) -> None:
        needs_prfaas = self.kind != "homogeneous_pd"
        if needs_prfaas != (self.prfaas is not None):
            raise ValueError(f"kind {self.kind} {'needs' if needs_prfaas else 'takes no'} prfaas")
        if self.kind != "naive_heterogeneous" and self.pd.prefill_profile is None:
            raise ValueError(f"kind {self.kind} needs pd.prefill_profile")
        if self.kind != "naive_heterogeneous" and self.pd.instances < 2:
            raise ValueError("pd.instances must be >= 2 to split prefill and decode")


@dataclass(frozen=True, config=_STRICT)
class PlanConfig:
    profiles: dict[str, ProfileSection]
    decode: dict[str, DecodeSection]
    workload: WorkloadSection
    deployments: tuple[DeploymentSection, ...] = Field(min_length=1)
    link: LinkSection | None = None
    search: SearchSection = SearchSection()
    description: str = ""


_ADAPTER = TypeAdapter(PlanConfig)
_UNIT_SUFFIXES = ("_gbps", "_s", "_mib", "_tokens", "_bytes")


def load_plan_config(path: str | Path) -> PlanConfig:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise PlanConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PlanConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_plan_config(raw, source=str(path))


def parse_plan_config(raw: Any, source: str = "config") -> PlanConfig:
    if not isinstance(raw, dict):
        raise PlanConfigError(f"{source}: expected a mapping at the top level")
    try:
        config = _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors()]
        raise PlanConfigError(f"{source}: invalid plan config:\n  " + "\n  ".join(lines)) from None
    _check_references(config, source)
    return config


def _describe(err: Any) -> str:
    loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
    kind, message = err["type"], err["msg"]
    if kind == "unexpected_keyword_argument":
        return f"{loc}: unknown key"
    if kind in ("missing_argument", "missing"):
        return f"{loc}: required key missing"
    if kind in ("float_parsing", "int_parsing", "float_type", "int_type"):
        unit = next((s[1:] for s in _UNIT_SUFFIXES if loc.endswith(s)), None)
        if unit is not None:
            return f"{loc}: expected a plain number in {unit}, got {err['input']!r}"
    return f"{loc}: {message.removeprefix('Value error, ')}"


def _check_references(config: PlanConfig, source: str) -> None:
    errors = []
    for name, profile in config.profiles.items():
        if profile.scale_of is not None and profile.scale_of not in config.profiles:
            errors.append(f"profiles.{name}.scale_of: unknown profile {profile.scale_of!r}")
    for i, dep in enumerate(config.deployments):
        refs: list[tuple[str, str | None, Mapping[str, object]]] = [
            (f"deployments.{i}.pd.decode", dep.pd.decode, config.decode)
        ]
        refs.append(
            (f"deployments.{i}.pd.prefill_profile", dep.pd.prefill_profile, config.profiles)
        )
        if dep.prfaas is not None:
            refs.append(
                (
                    f"deployments.{i}.prfaas.prefill_profile",
                    dep.prfaas.prefill_profile,
                    config.profiles,
                )
            )
            if config.link is None:
                errors.append(f"link: required by deployment {dep.name!r} (kind {dep.kind})")
        for key, value, table in refs:
            if value is not None and value not in table:
                known = ", ".join(sorted(table)) or "none"
                errors.append(f"{key}: unknown name {value!r} (known: {known})")
    if errors:
        raise PlanConfigError(f"{source}: invalid plan config:\n  " + "\n  ".join(errors))
