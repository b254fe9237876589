"""The scenarios file (``prfaas simulate --config``): frozen, validated at the edge.

A scenarios file names a planner config (``plan:``, relative to the file) for profiles,
workload and deployments; ``defaults`` sets the simulator's knobs; each scenario may
override any default under ``settings`` and adds its traffic shape (bursts, drift, a link
schedule, a trace). A plain planner config is accepted too: every knob then has its default.
Errors name the key (``scenarios.burst.bursts.0.factor: ...``), as in the planner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from prfaas.planner.config import PlanConfigError
from prfaas.sim.conversation import ConversationWorkload

_CHAT = ConversationWorkload()

_STRICT = ConfigDict(extra="forbid")
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]


class SimConfigError(ValueError):
    """A scenarios file that cannot be used; the message names the offending keys."""


@dataclass(frozen=True, config=_STRICT)
class ControlSettings:
    short_interval_s: Positive = 1.0
    long_interval_s: Positive = 120.0
    scarce_above: Annotated[float, Field(gt=0, le=1)] = 0.7
    abundant_below: Annotated[float, Field(ge=0, le=1)] = 0.4
    queue_ratio: Annotated[float, Field(ge=1)] = 2.0
    queue_slack_s: NonNegative = 2.0
    nudge: Positive = 0.05
    max_nudge: Annotated[float, Field(ge=1)] = 2.0
    min_gain: NonNegative = 0.05
    min_samples: Annotated[int, Field(ge=1)] = 200


@dataclass(frozen=True, config=_STRICT)
class SimSettings:
    seed: int = 0
    duration_s: Positive = 3600.0
    warmup_s: NonNegative = 300.0
    drain_limit_s: NonNegative = 600.0
    ttft_slo_s: Positive = 30.0
    tpot_slo_s: Positive = 0.025
    sample_interval_s: Positive = 10.0
    role_switch_drain_s: NonNegative = 30.0
    rtt_ms: NonNegative = 20.0
    local_link_gbps: Positive = 800.0
    block_tokens: Annotated[int, Field(ge=1)] = 512
    cache_capacity_blocks: Annotated[int, Field(ge=0)] = 0
    max_batch_tokens: Annotated[int, Field(ge=1)] = 8192
    pipeline_layers: Annotated[int, Field(ge=1)] = 32
    balance_factor: Annotated[float, Field(ge=1)] = 1.25
    length_window: Annotated[int, Field(ge=1)] = 2000
    control: ControlSettings = ControlSettings()

    def __post_init__(self) -> None:
        if self.warmup_s >= self.duration_s:
            raise ValueError(
                f"warmup_s ({self.warmup_s:g}) must be < duration_s ({self.duration_s:g}); "
                "nothing would be measured (pass --warmup)"
            )


@dataclass(frozen=True, config=_STRICT)
class BurstSection:
    start_s: NonNegative
    end_s: Positive
    factor: NonNegative


@dataclass(frozen=True, config=_STRICT)
class DriftSection:
    start_s: NonNegative
    end_s: Positive
    mu_to: float


@dataclass(frozen=True, config=_STRICT)
class LinkStep:
    at_s: NonNegative
    gbps: NonNegative


@dataclass(frozen=True, config=_STRICT)
class TraceReplay:
    path: str
    speedup: Positive = 1.0


@dataclass(frozen=True, config=_STRICT)
class ConversationSection:
    """Multi-turn sessions (``conversation.py``); duration, seed and block size come from
    the run's settings. Defaults: the chat preset."""

    session_rate_rps: Positive = _CHAT.session_rate_rps
    mean_turns: Annotated[float, Field(ge=1)] = _CHAT.mean_turns
    max_turns: Annotated[int, Field(ge=1)] = _CHAT.max_turns
    system_prompts: Annotated[int, Field(ge=1)] = _CHAT.system_prompts
    system_tokens: Annotated[int, Field(ge=0)] = _CHAT.system_tokens
    first_user_tokens: Positive = _CHAT.first_user_tokens
    user_tokens: Positive = _CHAT.user_tokens
    output_tokens: Positive = _CHAT.output_tokens
    length_sigma: NonNegative = _CHAT.length_sigma
    max_context_tokens: Annotated[int, Field(ge=1)] = _CHAT.max_context_tokens
    think_s: Positive = _CHAT.think_s
    min_gap_s: NonNegative = _CHAT.min_gap_s


@dataclass(frozen=True, config=_STRICT)
class ScenarioSection:
    description: str = ""
    kind: Literal["link-dip", "burst", "drift", "trace", "steady", "routing"] = "steady"
    deployment: str | None = None
    policies: tuple[str, ...] = ("prfaas-static", "prfaas-adaptive")
    rate_rps: Positive | None = None
    bursts: tuple[BurstSection, ...] = ()
    drift: DriftSection | None = None
    link_schedule: tuple[LinkStep, ...] = ()
    trace: TraceReplay | None = None
    conversation: ConversationSection | None = None
    measure_from_s: NonNegative | None = None  # drift: judge max rate from here on
    settings: dict[str, Any] = Field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.trace is not None and self.conversation is not None:
            raise ValueError("give a trace or a conversation, not both")


@dataclass(frozen=True, config=_STRICT)
class ScenarioFile:
    plan: str
    defaults: dict[str, Any] = Field(default_factory=dict)
    scenarios: dict[str, ScenarioSection] = Field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class LoadedConfig:
    plan_path: Path
    defaults: dict[str, Any]
    scenarios: dict[str, ScenarioSection]


def load_sim_config(path: str | Path) -> LoadedConfig:
    """A scenarios file, or a plain planner config (which then has no scenarios)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SimConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SimConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or "plan" not in raw:
        return LoadedConfig(path, {}, {})
    parsed = _validate(TypeAdapter(ScenarioFile), raw, str(path))
    settings(parsed.defaults, {}, str(path))  # fail early on bad defaults
    for name, scenario in parsed.scenarios.items():
        settings(parsed.defaults, scenario.settings, f"{path}: scenarios.{name}")
    return LoadedConfig((path.parent / parsed.plan).resolve(), parsed.defaults, parsed.scenarios)


def settings(defaults: dict[str, Any], overrides: dict[str, Any], source: str) -> SimSettings:
    merged = {**defaults, **overrides}
    control = {**defaults.get("control", {}), **overrides.get("control", {})}
    if control:
        merged["control"] = control
    return _validate(TypeAdapter(SimSettings), merged, source)


def _validate(adapter: TypeAdapter[Any], raw: Any, source: str) -> Any:
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown key" if err["type"] == "unexpected_keyword_argument" else err["msg"]
            lines.append(f"{loc}: {msg.removeprefix('Value error, ')}")
        raise SimConfigError(
            f"{source}: invalid simulator config:\n  " + "\n  ".join(lines)
        ) from None


__all__ = ["PlanConfigError", "SimConfigError", "SimSettings", "load_sim_config", "settings"]
