"""The ``models:`` section of deploy.yaml: further models, and second versions, beside the
top-level one.

The top-level ``model`` (served as ``served_model_name``, on the top-level ``clusters``) is
version ``version`` of its served name. Each entry of ``models:`` is one more model version
on clusters of its own::

    models:
      - name: tiny-b          # the name clients pass as `model`
        model: /ckpt/tiny-b   # HF folder or .gguf
        clusters: [...]       # as the top-level clusters: one pd cluster, PrfaaS ones
        links: [...]
      - name: tiny            # the top-level model's served name: its second version
        version: green
        model: /ckpt/tiny-v2
        weight: 0             # percent of the name's new sessions (default 0); v1 has the rest
        sticky: tenant        # a tenant keeps one version (default: per session header)
        clusters: [...]

Cluster and instance names are unique across the whole deployment (a worker's cluster says
which version it serves). A served name has at most two versions (blue-green); their weights
are percents summing to 100, the first version's being the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Self, TypeVar

from pydantic import Field

from prfaas.deploy import regions
from prfaas.deploy.regions import Fleet, residency_within
from prfaas.deploy.specs import ClusterSpec, LinkSpec, _Strict

NAME_PATTERN = r"^[A-Za-z0-9_.:/-]+$"
DEFAULT_SERVED_NAME = "SmolLM2-135M-Instruct"  # the embedded default model's
PRIMARY_VERSION = "v1"  # the top-level model's version unless ``version`` says


class ModelSpec(_Strict):
    name: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN)
    version: str = Field(PRIMARY_VERSION, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = Field(min_length=1, max_length=4096)
    # Percent of the name's new sessions for a second version (default 0: it starts idle);
    # a name's first version gets the rest, whatever it says.
    weight: float | None = Field(None, ge=0, le=100)
    # What keeps a conversation on one version: the client's session header (``session``),
    # or, without one, the tenant (``tenant``: a tenant's requests keep its first version).
    sticky: Literal["session", "tenant"] = "session"
    clusters: list[ClusterSpec]
    links: list[LinkSpec] = Field(default_factory=list)


@dataclass(frozen=True)
class ModelVersion:
    """One served model version as the deployment builds it: its clusters and links, the
    checkpoint, and its starting weight (percent of its name's new sessions)."""

    name: str
    version: str
    model: str | None  # None: the embedded default
    weight: float
    clusters: tuple[ClusterSpec, ...]
    links: tuple[LinkSpec, ...]
    sticky_tenant: bool = False

    @property
    def key(self) -> str:
        """``name@version``: how logs, usage and admin routes name it."""
        return f"{self.name}@{self.version}"


def model_versions(primary: ModelVersion, extra: Sequence[ModelSpec]) -> list[ModelVersion]:
    """Every version the deployment serves, the top-level one first; raises ``ValueError``
    naming the problem (a third version, weights over 100, a name reused)."""
    versions = [primary]
    for spec in extra:
        versions.append(
            ModelVersion(
                spec.name,
                spec.version,
                spec.model,
                spec.weight or 0.0,
                tuple(spec.clusters),
                tuple(spec.links),
                spec.sticky == "tenant",
            )
        )
    keys = [v.key for v in versions]
    if len(set(keys)) != len(keys):
        raise ValueError(f"models: a name@version is configured twice: {keys}")
    by_name: dict[str, list[ModelVersion]] = {}
    for v in versions:
        by_name.setdefault(v.name, []).append(v)
    out: list[ModelVersion] = []
    for name, group in by_name.items():
        if len(group) > 2:
            raise ValueError(f"models: {name!r} has {len(group)} versions; blue-green has two")
        rest = 100.0 - sum(v.weight for v in group[1:])
        if rest < 0:
            raise ValueError(f"models: the weights of {name!r}'s second version exceed 100")
        out.append(_with_weight(group[0], rest))
        out.extend(group[1:])
    clusters = [c.name for v in out for c in v.clusters]
    if len(set(clusters)) != len(clusters):
        raise ValueError("models: cluster names must be unique across every model")
    instances = [i.name for v in out for c in v.clusters for i in c.instances]
    if len(set(instances)) != len(instances):
        raise ValueError("models: instance names must be unique across every model")
    return out


def _with_weight(v: ModelVersion, weight: float) -> ModelVersion:
    return ModelVersion(v.name, v.version, v.model, weight, v.clusters, v.links, v.sticky_tenant)


class DeployConfig(regions.DeployConfig, Protocol):
    """The parts of ``deploy.config.DeployConfig`` versions are cut from (a protocol: that
    module validates ``models:`` through this one)."""

    @property
    def served_model_name(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def version(self) -> str: ...
    @property
    def models(self) -> list[ModelSpec]: ...

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Self: ...

    def model_dump(self) -> dict[str, Any]: ...

    @classmethod
    def model_validate(cls, obj: Any) -> Self: ...


C = TypeVar("C", bound=DeployConfig)


@dataclass(frozen=True)
class ModelFacts:
    """A version's checkpoint as resolved at start: its folder, tokenizer, context limit."""

    folder: str
    tokenizer: Any
    max_model_len: int


def served_versions(cfg: C) -> list[tuple[ModelVersion, C]]:
    """Each version with its own view of the deployment: ``cfg`` with that version's model,
    name, clusters and links, and no ``models`` (validated like any deployment: one PD
    cluster, secure links, ...). Tenants keep their limits; their residency (clusters,
    regions) is applied per version by the caller (``residency``)."""
    primary = ModelVersion(
        cfg.served_model_name or cfg.model or DEFAULT_SERVED_NAME,
        cfg.version,
        cfg.model,
        100.0,
        tuple(cfg.clusters),
        tuple(cfg.links),
    )
    out: list[tuple[ModelVersion, C]] = []
    # Residency (clusters, regions) ranges over the whole fleet: applied per version by the
    # caller (``residency``), not validated against one version's clusters.
    tenants = [t.model_copy(update={"clusters": None, "regions": None}) for t in cfg.tenants]
    for i, v in enumerate(model_versions(primary, cfg.models)):
        if i == 0:
            view = cfg.model_copy(update={"models": []})
        else:
            raw = cfg.model_dump() | {
                "model": v.model,
                "served_model_name": v.name,
                "version": v.version,
                "clusters": [c.model_dump() for c in v.clusters],
                "links": [link.model_dump() for link in v.links],
                "tenants": [t.model_dump() for t in tenants],
                "models": [],
            }
            try:
                view = type(cfg).model_validate(raw)
            except ValueError as e:
                raise ValueError(f"models: {v.key}: {e}") from None
        out.append((v, view))
    return out


def check_models(cfg: DeployConfig) -> None:
    if cfg.models:
        served_versions(cfg)


def fleet_of(cfg: DeployConfig) -> Fleet:
    """Every version's clusters and links with the tenants: what residency ranges over."""
    return Fleet(
        [*cfg.clusters, *(c for m in cfg.models for c in m.clusters)],
        [*cfg.links, *(link for m in cfg.models for link in m.links)],
        list(cfg.tenants),
    )


def residency(cfg: DeployConfig, clusters: Sequence[ClusterSpec]) -> dict[str, frozenset[str]]:
    """Tenant -> the clusters of ``clusters`` (one version's) it may use, for tenants with a
    residency (clusters or regions; an empty set: none of them)."""
    return residency_within(fleet_of(cfg), clusters)
