"""`prfaas serve`: a whole deployment on this machine: gateway, workers, link emulators.

The embedded default: a local PD cluster (one PD-P, one PD-D) and a remote PrfaaS cluster
(one prefill worker) whose KV reaches the decode worker through a link emulator (a stated
bandwidth and RTT) with mutual TLS. Ctrl-C stops every process.

With ``models:`` (``deploy.models``), every further model version gets its own clusters,
workers, fleet, router, kv index and backend; the gateway picks a version per request
(``gateway.catalog``). The top-level model's version keeps the control loop, the canary and
``/status``; the others run at their configured (or default) threshold.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from prfaas.config import cluster_token_from_env, server_secret_from_env
from prfaas.control_plane import GATEWAY, ControlTls, warn_insecure
from prfaas.deploy.admin import add_admin_routes
from prfaas.deploy.canary import add_canary_metrics, add_canary_routes, build_canary
from prfaas.deploy.cluster_metrics import ClusterMetrics, add_kv_index_metrics
from prfaas.deploy.config import DeployConfig, binds_loopback, open_kv_index, warn_insecure_links
from prfaas.deploy.control_loop import ControlLoop, running
from prfaas.deploy.launcher import Launcher
from prfaas.deploy.links import kv_routes, kv_target
from prfaas.deploy.models import ModelFacts, ModelVersion, residency, served_versions
from prfaas.deploy.profiling import (
    ThresholdChoice,
    profile_deployment,
    profiles_at_start,
)
from prfaas.deploy.readiness import not_ready_reason
from prfaas.deploy.region_status import RegionMetrics
from prfaas.deploy.regions import tenant_regions
from prfaas.deploy.roles import add_role_route, add_status_route, switch_role
from prfaas.deploy.rollout import Drains, add_rollout_metrics, add_rollout_routes
from prfaas.deploy.versions import (
    VersionParts,
    catalog_of,
    fleet_and_router,
    further_versions,
    worker_spawns,
)
from prfaas.dispatch.cluster import ClusterBackend
from prfaas.dispatch.config import BackendSettings
from prfaas.gateway.fleet import WorkerFleet
from prfaas.gateway.internal import add_internal_routes
from prfaas.gateway.metrics import GatewayMetrics
from prfaas.messages import Role, WorkerInfo
from prfaas.router.kv_index import KvIndexBackend
from prfaas.router.redis_index import RedisKvIndex
from prfaas.transfer.audit import AuditLog
from prfaas.transfer.emulator import LinkEmulator
from prfaas.transfer.tls import write_certs

logger = logging.getLogger(__name__)


@dataclass
class Deployment:
    """Everything `prfaas serve` started, so that it can all be stopped."""

    config: DeployConfig
    app: FastAPI
    backend: ClusterBackend
    fleet: WorkerFleet
    launcher: Launcher
    control: ControlLoop
    emulators: list[LinkEmulator] = field(default_factory=list)
    expected_workers: list[str] = field(default_factory=list)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    # The mutual-TLS control listener (registration, heartbeats) and its identity; None: an
    # insecure control plane (those routes are on ``app``, plain HTTP).
    control_app: FastAPI | None = None
    control_tls: ControlTls | None = None
    # Every served model version, the top-level one (``backend``, ``fleet``) first.
    versions: list[VersionParts] = field(default_factory=list)
    drains: Drains | None = None  # the cache frees of drained versions, still running

    def ready(self) -> bool:
        """Every spawned worker has registered (start-up profiling can begin)."""
        return all(any(v.fleet.healthy(n) for v in self.versions) for n in self.expected_workers)

    def not_ready_reason(self) -> str | None:
        """Why some request would fail now (``/health`` says it with a 503); None once every
        configured path of every model version has a healthy instance and t is settled."""
        settled = self.control.choice is not None or not profiles_at_start(self.config)
        for parts in self.versions:
            reason = not_ready_reason(parts.config, list(parts.fleet.instances()), settled)
            if reason is not None:
                return reason if len(self.versions) == 1 else f"{parts.version.key}: {reason}"
        return None

    async def aclose_backends(self) -> None:
        if self.drains is not None:
            self.drains.cancel()
        for parts in self.versions:
            await parts.backend.aclose()

    def close(self) -> None:
        self.launcher.stop()
        self.app.state.tenants.ledger.close()
        for emu in self.emulators:
            emu.close()
        if self.tmp is not None:
            self.tmp.cleanup()


def build_deployment(
    cfg: DeployConfig,
    tokenizer: Any,
    model_folder: str,
    max_model_len: int,
    block_size: int,
    *,
    gateway_url: str,
    api_keys: dict[str, str],
    log_dir: Path | None = None,
    kv_index: KvIndexBackend | None = None,
    models: Mapping[str, ModelFacts] | None = None,
) -> Deployment:
    """``tokenizer``, ``model_folder`` and ``max_model_len`` are the top-level model's;
    ``models`` those of every further version (``name@version``)."""
    from prfaas.gateway.app import create_app
    from prfaas.gateway.config import GatewayConfig

    if kv_index is None:
        kv_index = open_kv_index(cfg.kv_index)  # first: an unreachable Redis stops us here
    versions = served_versions(cfg)
    facts = {versions[0][0].key: ModelFacts(model_folder, tokenizer, max_model_len)}
    facts.update(models or {})
    clusters = [(v, c) for v, view in versions for c in view.clusters]
    all_links = [link for _, view in versions for link in view.links]
    # Spawned workers heartbeat to every gateway; with several, they outlive this one.
    gateway_urls = (gateway_url, *(u for u in cfg.gateways if u != gateway_url))
    tmp = tempfile.TemporaryDirectory(prefix="prfaas-serve-")
    # Workers started elsewhere must share the token (PRFAAS_CLUSTER_TOKEN) and the CA.
    cluster_token = cluster_token_from_env() or secrets.token_hex(16)
    certs_dir: Path | None = cfg.certs_dir
    insecure = cfg.control_plane.insecure
    if certs_dir is None and (not insecure or any(link.tls for link in all_links)):
        certs_dir = Path(tmp.name) / "certs"  # a few ms: mutual TLS costs no start-up time
        write_certs(certs_dir, [c.name for _, c in clusters])
    control_tls = None if insecure or certs_dir is None else ControlTls.from_dir(certs_dir, GATEWAY)
    worker_tls = None if control_tls is None else control_tls.client_context()
    spawns = worker_spawns(
        cfg, clusters, all_links, facts, block_size, gateway_urls, certs_dir, insecure
    )
    warn_insecure_links(cfg)
    emulators, links = kv_routes(
        spawns, [c for _, c in clusters], all_links, tls=certs_dir is not None
    )

    def settings(version: ModelVersion, view: DeployConfig) -> BackendSettings:
        return BackendSettings(
            model_name=version.name,
            cluster_token=cluster_token,
            kv_deadline_s=cfg.kv_deadline_s,
            stream_stall_s=cfg.stream_stall_s,
            kv_target=functools.partial(kv_target, links),
            residency=residency(cfg, view.clusters),
            tenant_regions=tenant_regions(cfg),
            worker_tls=worker_tls,
        )

    fleet, router = fleet_and_router(cfg, kv_index, block_size, max_model_len)
    metrics = GatewayMetrics()
    if isinstance(kv_index, RedisKvIndex):
        add_kv_index_metrics(metrics, kv_index)
    cluster_metrics = ClusterMetrics(metrics, fleet, router)
    audit = AuditLog(cfg.audit_log)  # every version's transfers, one log
    backend = ClusterBackend(
        settings(*versions[0]),
        fleet,
        router,
        tokenizer,
        max_model_len,
        on_prefill=cluster_metrics.on_prefill,
        on_pull=cluster_metrics.on_pull,
        audit=audit,
    )
    parts = [VersionParts(versions[0][0], versions[0][1], backend)]
    parts += further_versions(cfg, versions[1:], facts, settings, block_size, audit)
    catalog, drains = catalog_of(parts)
    add_rollout_metrics(metrics, catalog)

    async def switch(name: str, role: Role) -> WorkerInfo:
        return await switch_role(fleet, cluster_token, name, role, worker_tls)

    control = ControlLoop(cfg.policy.control, cfg.policy, router, fleet, switch)
    canary = build_canary(cfg.canary, backend, tokenizer, max_model_len)
    router.quarantined = canary.board.is_quarantined
    add_canary_metrics(metrics, canary)
    limits = {t.name: t.limits() for t in cfg.tenants}
    gateway_config = GatewayConfig(
        api_keys=api_keys,
        server_secret=server_secret_from_env() or b"",
        tenant_limits={name: lim for name, lim in limits.items() if lim is not None},
        usage_log=cfg.usage_log,
        **cfg.overload.model_dump(),
    )
    holder: list[Deployment] = []  # the app asks the deployment built around it
    app = create_app(
        catalog,
        gateway_config,
        metrics=metrics,
        lifespan=lambda _: running(control, canary),
        readiness=lambda: holder[0].not_ready_reason() if holder else "starting",
    )
    fleets = [p.fleet for p in parts]
    for p in parts:
        p.fleet.inflight = app.state.admission.by_instance  # the one owner of in-flight counts
        p.fleet.on_capacity = app.state.admission.grant
        p.fleet.on_register = emulators.registered  # spawned workers announce their KV port
        p.backend.failover.on_moved = app.state.admission.move  # a failed-over request counts anew
    audit.listeners.append(app.state.tenants.ledger.transferred)  # KV bytes per tenant
    assert router.regions is not None
    region_metrics = RegionMetrics(metrics, router.regions, fleet)  # the top-level version's
    audit.request_listeners.append(region_metrics.on_request)
    control_app: FastAPI | None = None
    if control_tls is None:
        warn_insecure("the gateway (registrations on its public port)")
        add_internal_routes(app, fleets, cluster_token)
    else:
        control_app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        add_internal_routes(control_app, fleets, cluster_token, bound_to_certificates=True)
    # The cluster token is the admin key: off this machine, /status needs it too.
    admin_token = None if binds_loopback(cfg.host) else cluster_token
    add_status_route(app, fleet, router, control, canary, admin_token=admin_token)
    add_canary_routes(app, canary, cluster_token)
    add_role_route(app, fleet, cluster_token, worker_tls)
    launcher = Launcher(cluster_token, log_dir or Path(tmp.name) / "logs")
    add_admin_routes(app, emulators.by_link, launcher, cluster_token)
    add_rollout_routes(app, catalog, drains, cluster_token)
    expected = [s.name for s in spawns]
    deployment = Deployment(
        cfg,
        app,
        backend,
        fleet,
        launcher,
        control,
        emulators.all,
        expected,
        tmp,
        control_app,
        control_tls,
        parts,
        drains,
    )
    holder.append(deployment)
    for spec in spawns:
        launcher.spawn(spec)
    return deployment


def control_server(deployment: Deployment, host: str, port: int) -> uvicorn.Server | None:
    """The gateway's control listener (registrations, heartbeats; mutual TLS) on ``host``:
    ``port``, to serve beside the public app; None for an insecure control plane."""
    if deployment.control_app is None or deployment.control_tls is None:
        return None
    options = deployment.control_tls.uvicorn_options()
    config = uvicorn.Config(
        deployment.control_app, host=host, port=port, log_level="warning", lifespan="off", **options
    )
    return uvicorn.Server(config)


async def wait_ready(deployment: Deployment, timeout_s: float) -> None:
    """Wait until every spawned worker has registered; fail early if one died."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not deployment.ready():
        dead = deployment.launcher.dead()
        if dead:
            raise RuntimeError(
                f"worker(s) {dead} exited during start-up; see their logs in "
                f"{deployment.launcher.log_dir}"
            )
        if loop.time() > end:
            raise TimeoutError("workers did not register in time")
        await asyncio.sleep(0.2)


async def wait_serving(deployment: Deployment, show: Callable[[str], None]) -> None:
    """Wait until ``/health`` would answer 200 (every configured path served, t settled),
    telling ``show`` what is missing. No deadline: a worker started by hand elsewhere may
    come whenever its operator starts it; a spawned worker that dies ends the wait."""
    while (reason := deployment.not_ready_reason()) is not None:
        dead = deployment.launcher.dead()
        if dead:
            raise RuntimeError(
                f"worker(s) {dead} exited during start-up; see their logs in "
                f"{deployment.launcher.log_dir}"
            )
        show(reason)
        await asyncio.sleep(0.2)


async def start_control(deployment: Deployment) -> ThresholdChoice:
    """Once the workers are ready: profile them, solve t, install it, start the loop."""
    backend = deployment.backend
    block_size = deployment.fleet.block_size
    assert block_size is not None  # the workers are ready, so registered
    choice, inputs = await profile_deployment(
        deployment.config,
        deployment.fleet,
        backend.settings.cluster_token,
        backend.max_model_len,
        block_size,
        backend.settings.worker_tls,
    )
    deployment.control.begin(choice, inputs)
    return choice


@contextlib.asynccontextmanager
async def lifespan_closing(deployment: Deployment) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await deployment.aclose_backends()
        deployment.close()
