"""Regions in deploy.yaml: a ``region`` on each cluster, a ``regions`` list per tenant, and
what the gateway derives from them (``router.regions.RegionMap``, residency per tenant).

    clusters:
      - {name: eu-pd, kind: pd, region: eu, instances: [...]}
      - {name: us-pd, kind: pd, region: us, instances: [...]}
      - {name: eu-prfaas, kind: prfaas, region: eu, instances: [...]}
    links:                                   # a PrfaaS cluster serves the PD clusters
      - {src: eu-prfaas, dst: eu-pd}         # it has a link to
    tenants:
      - {name: acme, regions: [eu]}          # pinned: never served outside eu
      - {name: globex, regions: [eu, us]}    # eu first, us when eu cannot serve
      - {name: initech}                      # any region, in the clusters' order

Rules (``check_regions``, at load time):
- a cluster without a region is a region of its own, named as the cluster (so a deployment
  that names no region is what it always was);
- a region holds at most one PD cluster; a tenant's regions must exist and hold a PD
  cluster, unless the tenant's ``clusters`` narrow them;
- residency is the clusters of the tenant's regions (intersected with its ``clusters`` when
  both are set): prompts, KV, cache pulls and failover all stay inside it;
- with several PD clusters, a PrfaaS cluster serves the PD clusters it has a link to and
  needs at least one (with one PD cluster, that link is required as before).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from prfaas.deploy.specs import ClusterSpec, LinkSpec, TenantSpec
from prfaas.router.regions import RegionMap


class DeployConfig(Protocol):
    """The parts of ``deploy.config.DeployConfig`` regions are made of."""

    @property
    def clusters(self) -> list[ClusterSpec]: ...

    @property
    def links(self) -> list[LinkSpec]: ...

    @property
    def tenants(self) -> list[TenantSpec]: ...


@dataclass(frozen=True)
class Fleet:
    """Every model version's clusters and links at once (``models:`` adds clusters of its
    own): what a tenant's residency ranges over. Routing is per version (its own view)."""

    clusters: list[ClusterSpec]
    links: list[LinkSpec]
    tenants: list[TenantSpec]


def region_of(cfg: DeployConfig) -> dict[str, str]:
    """Every cluster's region."""
    return {c.name: c.region or c.name for c in cfg.clusters}


def offload_pairs(cfg: DeployConfig) -> list[tuple[str, str]]:
    """The (PrfaaS cluster, PD cluster) pairs a prefill's KV may take: with one PD cluster,
    every PrfaaS cluster to it; with several, the pairs a link connects."""
    pds = [c.name for c in cfg.clusters if c.kind == "pd"]
    remotes = [c.name for c in cfg.clusters if c.kind == "prfaas"]
    if len(pds) == 1:
        return [(r, pds[0]) for r in remotes]
    linked = {(link.src, link.dst) for link in cfg.links}
    return [(r, pd) for r in remotes for pd in pds if (r, pd) in linked]


def region_map(cfg: DeployConfig, max_load_per_decode: int | None) -> RegionMap:
    regions = region_of(cfg)
    pds = [c.name for c in cfg.clusters if c.kind == "pd"]
    offload: dict[str, set[str]] = {pd: set() for pd in pds}
    for remote, pd in offload_pairs(cfg):
        offload[pd].add(remote)
    return RegionMap(
        region_of=regions,
        pd_cluster={regions[pd]: pd for pd in pds},
        order=tuple(regions[pd] for pd in pds),
        offload={pd: frozenset(remotes) for pd, remotes in offload.items()},
        max_load_per_decode=max_load_per_decode,
    )


def residency(cfg: DeployConfig) -> dict[str, frozenset[str]]:
    """Tenant -> the only clusters it may use (tenants with no restriction are absent)."""
    regions = region_of(cfg)
    allowed: dict[str, frozenset[str]] = {}
    for t in cfg.tenants:
        if t.clusters is None and t.regions is None:
            continue
        clusters = set(regions) if t.clusters is None else set(t.clusters)
        if t.regions is not None:
            clusters &= {c for c, r in regions.items() if r in t.regions}
        allowed[t.name] = frozenset(clusters)
    return allowed


def tenant_regions(cfg: DeployConfig) -> dict[str, tuple[str, ...]]:
    """Tenant -> its regions in order of preference (tenants that name none are absent)."""
    return {t.name: tuple(t.regions) for t in cfg.tenants if t.regions is not None}


def residency_within(
    fleet: DeployConfig, clusters: Sequence[ClusterSpec]
) -> dict[str, frozenset[str]]:
    """``residency`` over the whole fleet, narrowed to ``clusters`` (one model version's):
    a tenant restricted elsewhere maps to the empty set here (none of them)."""
    own = {c.name for c in clusters}
    return {t: allowed & own for t, allowed in residency(fleet).items()}


def check_regions(cfg: DeployConfig, fleet: DeployConfig | None = None) -> None:
    """The rules of the module docstring; a ValueError naming the key otherwise. ``fleet``:
    every model version's clusters, which tenants' residency ranges over (default ``cfg``)."""
    pds = [c.name for c in cfg.clusters if c.kind == "pd"]
    if not pds:
        raise ValueError("at least one cluster of kind 'pd' (a region's decode cluster) is needed")
    regions = region_of(cfg)
    seen: dict[str, str] = {}
    for pd in pds:
        if regions[pd] in seen:
            raise ValueError(
                f"clusters {seen[regions[pd]]!r} and {pd!r} are both PD clusters of region "
                f"{regions[pd]!r}: a region holds at most one"
            )
        seen[regions[pd]] = pd
    if len(pds) > 1:
        served = {remote for remote, _ in offload_pairs(cfg)}
        for c in cfg.clusters:
            if c.kind == "prfaas" and c.name not in served:
                raise ValueError(
                    f"PrfaaS cluster {c.name!r} has no link to a PD cluster: with several "
                    "regions, a link says which PD clusters it serves"
                )
    fleet = fleet or cfg
    regions = region_of(fleet)
    pds = [c.name for c in fleet.clusters if c.kind == "pd"]
    allowed = residency(fleet)
    for t in fleet.tenants:
        for cluster in t.clusters or []:
            if cluster not in regions:
                raise ValueError(f"tenant {t.name!r}: unknown cluster {cluster!r}")
        for region in t.regions or []:
            if region not in regions.values():
                raise ValueError(f"tenant {t.name!r}: unknown region {region!r}")
        if len(set(t.regions or [])) != len(t.regions or []):
            raise ValueError(f"tenant {t.name!r}: a region is listed twice")
        if t.name in allowed and not any(c in allowed[t.name] for c in pds):
            raise ValueError(
                f"tenant {t.name!r}: its regions and clusters leave no PD cluster to decode in"
            )
