"""The served model versions of a deployment: each one's own fleet, router, kv index and
backend (``deploy.models`` says which versions and clusters), and the catalog the gateway
picks a version from per request (``gateway.catalog``).

The top-level version (first) is built by ``serve.build_deployment`` itself, since the
control loop, the canary and ``/status`` hang on it; ``further_versions`` builds the others,
each at its configured (or default) threshold.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from prfaas.deploy.config import DeployConfig, open_kv_index
from prfaas.deploy.launcher import WorkerSpawn, free_port
from prfaas.deploy.models import ModelFacts, ModelVersion
from prfaas.deploy.profiling import default_threshold
from prfaas.deploy.regions import region_map
from prfaas.deploy.rollout import Drains
from prfaas.deploy.specs import ClusterSpec, LinkSpec
from prfaas.deploy.ttft_estimate import placeholder_choice
from prfaas.dispatch.cluster import ClusterBackend
from prfaas.dispatch.config import BackendSettings
from prfaas.gateway.catalog import ModelCatalog, ServedVersion
from prfaas.gateway.fleet import WorkerFleet
from prfaas.router.kv_index import KvIndex, KvIndexBackend
from prfaas.router.policies import POLICIES
from prfaas.router.router import Router, RouterConfig
from prfaas.router.types import RouterState
from prfaas.transfer.audit import AuditLog


@dataclass
class VersionParts:
    """One served model version's own side of the gateway: its view of the deployment
    (its clusters and links), fleet and backend (router and kv index inside)."""

    version: ModelVersion
    config: DeployConfig
    backend: ClusterBackend

    @property
    def fleet(self) -> WorkerFleet:
        return self.backend.fleet


def fleet_and_router(
    view: DeployConfig, kv_index: KvIndexBackend, block_size: int, max_model_len: int
) -> tuple[WorkerFleet, Router]:
    """One model version's fleet (its clusters) and router (its policy and threshold)."""
    # The router counts cached tokens in ``block_size``: a worker with another is refused.
    clusters = {c.name: c.kind for c in view.clusters}
    fleet = WorkerFleet(
        clusters, kv_index, heartbeat_timeout_s=view.heartbeat_timeout_s, block_size=block_size
    )
    threshold = view.policy.threshold_tokens
    if threshold is None:
        threshold = default_threshold(max_model_len)
    instance_choice = None  # CHWBL
    if view.policy.instance_choice == "ttft":
        instance_choice = placeholder_choice(list(clusters), view.policy.balance_factor)
    router = Router(
        RouterConfig(block_tokens=block_size, balance_factor=view.policy.balance_factor),
        POLICIES[view.policy.name](),
        fleet,
        kv_index,
        RouterState(float(threshold), view.policy.mode),
        instance_choice,
        region_map(view, view.overload.max_inflight_per_decode),
    )
    return fleet, router


def further_versions(
    cfg: DeployConfig,
    versions: list[tuple[ModelVersion, DeployConfig]],
    facts: Mapping[str, ModelFacts],
    settings: Callable[[ModelVersion, DeployConfig], BackendSettings],
    block_size: int,
    audit: AuditLog,
) -> list[VersionParts]:
    """Every version after the top-level one, each with its own kv index: a version's
    blocks are found on its own instances only."""
    parts = []
    for version, view in versions:
        own_index: KvIndexBackend
        if cfg.kv_index.backend == "memory":
            own_index = KvIndex()
        else:
            prefix = re.sub(r"[^A-Za-z0-9_.:-]", "_", f"{cfg.kv_index.prefix}:{version.key}")
            own_index = open_kv_index(cfg.kv_index.model_copy(update={"prefix": prefix}))
        its = facts[version.key]
        fleet, router = fleet_and_router(view, own_index, block_size, its.max_model_len)
        backend = ClusterBackend(
            settings(version, view), fleet, router, its.tokenizer, its.max_model_len
        )
        backend.audit = audit  # every version's transfers, one log
        parts.append(VersionParts(version, view, backend))
    return parts


def catalog_of(parts: list[VersionParts]) -> tuple[ModelCatalog, Drains]:
    """The gateway's catalog of ``parts`` (weights, sticky tenants) and the drains that free
    a version's caches once its weight reaches 0 and nothing is held there."""
    catalog = ModelCatalog(
        [ServedVersion(p.version.name, p.version.version, p.backend) for p in parts],
        {p.version.key: p.version.weight for p in parts},
        sticky_tenants=frozenset(p.version.name for p in parts if p.version.sticky_tenant),
    )
    drains = Drains({p.version.key: p.backend for p in parts})
    catalog.on_drained = drains.start
    return catalog, drains


def worker_spawns(
    cfg: DeployConfig,
    clusters: list[tuple[ModelVersion, ClusterSpec]],
    all_links: list[LinkSpec],
    facts: Mapping[str, ModelFacts],
    block_size: int,
    gateway_urls: tuple[str, ...],
    certs_dir: Path | None,
    insecure: bool,
) -> list[WorkerSpawn]:
    """The workers this machine starts: every ``spawn`` instance of every version's clusters."""
    spawns: list[WorkerSpawn] = []
    for version, cluster in clusters:
        for inst in cluster.instances:
            if inst.spawn:
                engine = cfg.engine_of(cluster, inst)
                rates = {
                    f"{link.src}->{link.dst}": link.rate_gbps
                    for link in all_links
                    if link.src == cluster.name and link.rate_gbps
                }
                spawns.append(
                    WorkerSpawn(
                        name=inst.name,
                        cluster=cluster.name,
                        role=inst.role,
                        port=0,  # bound by the worker itself; announced when registering
                        # vLLM's connector binds its receiver in vLLM's engine core, so its
                        # port is chosen before (outside the ephemeral range); the reference
                        # engine binds its own.
                        kv_port=0 if engine == "reference" else free_port(),
                        gateway_urls=gateway_urls,
                        model=facts[version.key].folder,
                        certs_dir=certs_dir,
                        link_rates=rates,
                        max_model_len=cfg.max_model_len,
                        device=cluster.device_of(inst),
                        dtype=cluster.dtype_of(inst),
                        num_threads=inst.num_threads,
                        kv_cache_gb=inst.kv_cache_gb,
                        exit_with_launcher=len(gateway_urls) == 1,
                        insecure_control=insecure,
                        engine=engine,
                        # vLLM's instances take its CPU backend's block size (``launch``)
                        block_size=block_size if engine == "reference" else None,
                    )
                )
    return spawns
