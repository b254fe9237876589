"""`prfaas serve --config deploy.yaml`: clusters, instances, links, tenants, policy.

Validated at the edge with clear errors naming the key; the embedded default (no file) is a
local PD cluster (one PD-P, one PD-D) and a remote PrfaaS cluster (one prefill instance)
behind an emulated WAN link.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from pydantic import (
    Field,
    ValidationError,
    model_validator,
)

from prfaas.canary.config import CanaryConfig
from prfaas.deploy.models import PRIMARY_VERSION, ModelSpec, check_models, fleet_of
from prfaas.deploy.regions import check_regions, offload_pairs
from prfaas.deploy.specs import (
    ClusterSpec,
    ControlPlaneSpec,
    Engine,
    InstanceSpec,
    KvIndexSpec,
    LinkSpec,
    OverloadSpec,
    PolicySpec,
    TenantSpec,
    _Strict,
)
from prfaas.router.kv_index import KvIndex, KvIndexBackend
from prfaas.transfer.tls import GATEWAY

logger = logging.getLogger(__name__)


class DeployConfig(_Strict):
    model: str | None = None
    served_model_name: str | None = None  # the name clients pass; default: the model's
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    clusters: list[ClusterSpec]
    links: list[LinkSpec] = Field(default_factory=list)
    tenants: list[TenantSpec] = Field(default_factory=list)
    policy: PolicySpec = PolicySpec()
    kv_deadline_s: float = Field(30.0, gt=0)
    stream_stall_s: float = Field(120.0, gt=0)  # a decode stream silent this long ends (502)
    # A worker whose heartbeats (every 0.5 s) lapse this long is unhealthy: its streams end or
    # fail over. Raise it where workers may starve for CPU or memory for seconds at a time.
    heartbeat_timeout_s: float = Field(3.0, gt=1.0, le=60.0)
    certs_dir: Path | None = None  # from `prfaas certs`; default: a fresh CA per run
    control_plane: ControlPlaneSpec = ControlPlaneSpec()
    max_model_len: int | None = Field(None, gt=1)
    kv_index: KvIndexSpec = KvIndexSpec()
    # Every gateway the spawned workers register and heartbeat with (this one is added). With
    # several, the workers outlive a gateway that dies, so that the others keep serving.
    gateways: list[str] = Field(default_factory=list, max_length=16)
    audit_log: Path | None = None  # also append the audit log's JSON lines to this file
    usage_log: Path | None = None  # one JSON line per finished request, to bill from
    overload: OverloadSpec = OverloadSpec()
    canary: CanaryConfig = CanaryConfig()
    engine: Engine = "reference"  # every instance's unless its cluster or itself says
    # Further models and second versions (``deploy.models``); the top-level model is
    # ``version`` of ``served_model_name``.
    version: str = Field(PRIMARY_VERSION, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    models: list[ModelSpec] = Field(default_factory=list, max_length=64)

    def engine_of(self, cluster: ClusterSpec, inst: InstanceSpec) -> Engine:
        return inst.engine or cluster.engine or self.engine

    def block_size(self) -> int:
        """Tokens per KV block on every spawned instance, the one owner of it: the kv index
        and the router compare block hashes across instances, and every KV transfer's prompt
        hash is chained in these blocks, so all must agree. vLLM's CPU backend takes
        multiples of 32; the reference engine any power of two, so a deployment with a vLLM
        instance runs its reference instances at vLLM's size."""
        from prfaas.config import EngineConfig
        from prfaas.integrations.vllm.launch import BLOCK_SIZE

        clusters = [*self.clusters, *(c for m in self.models for c in m.clusters)]
        engines = {self.engine_of(c, i) for c in clusters for i in c.instances}
        return BLOCK_SIZE if "vllm" in engines else EngineConfig().block_size

    @model_validator(mode="after")
    def _references(self) -> DeployConfig:
        names = [c.name for c in self.clusters]
        if len(set(names)) != len(names):
            raise ValueError("cluster names must be unique")
        if GATEWAY in names:
            raise ValueError(f"cluster name {GATEWAY!r} is the gateways' certificate name")
        check_regions(self, fleet_of(self))  # one PD cluster per region
        for pd in (c for c in self.clusters if c.kind == "pd"):
            if not any(i.role == "decode" for i in pd.instances):
                raise ValueError(f"cluster {pd.name!r} needs at least one decode instance")
        for c in self.clusters:
            if c.kind == "prfaas" and any(i.role != "prefill" for i in c.instances):
                raise ValueError(f"cluster {c.name!r}: PrfaaS instances are prefill-only")
        instance_names = [i.name for c in self.clusters for i in c.instances]
        if len(set(instance_names)) != len(instance_names):
            raise ValueError("instance names must be unique")
        for link in self.links:
            for end in (link.src, link.dst):
                if end not in names:
                    raise ValueError(f"link {link.src}->{link.dst}: unknown cluster {end!r}")
        _check_links_secure(self)
        _check_dtypes_agree(self.clusters)
        if self.stream_stall_s <= self.kv_deadline_s:  # a first token may wait that long
            raise ValueError("stream_stall_s must exceed kv_deadline_s")
        tenant_names = [t.name for t in self.tenants]
        if len(set(tenant_names)) != len(tenant_names):
            raise ValueError("tenant names must be unique")
        _check_control_plane(self)
        for t in self.tenants:
            t.limits()  # a burst without its rate is refused here
        return self

    @model_validator(mode="after")
    def _models(self) -> DeployConfig:
        check_models(self)
        return self


def kv_paths(cfg: DeployConfig) -> list[tuple[str, str]]:
    """The cross-cluster paths KV can take, as (src, dst) clusters: each PrfaaS cluster's
    prefill instances to the decode instances of the PD clusters it serves
    (``regions.offload_pairs``; a cache pull from a PrfaaS cluster rides the same link);
    and, where cache pulls can run (policy prfaas in abundant mode, or a control loop that
    may switch to it), each PD cluster's cached prefixes to the PrfaaS clusters it uses."""
    paths = offload_pairs(cfg)
    control = cfg.policy.control
    if cfg.policy.name == "prfaas" and (
        cfg.policy.mode == "abundant" or (control.enabled and control.adapt_mode)
    ):
        paths += [(pd, r) for r, pd in paths]
    return paths


def _check_control_plane(cfg: DeployConfig) -> None:
    """Workers reach gateways over HTTPS unless the control plane is insecure; workers
    started elsewhere need the bundles (``certs_dir``) and a known control port."""
    scheme = "http://" if cfg.control_plane.insecure else "https://"
    for url in cfg.gateways:
        if not url.startswith(scheme):
            raise ValueError(
                f"gateways: {url!r} is not an {scheme} URL (a gateway's control listener"
                f"{'' if cfg.control_plane.insecure else ', mutual TLS'})"
            )
    by_hand = any(not i.spawn for c in cfg.clusters for i in c.instances)
    if by_hand and not cfg.control_plane.insecure:
        if cfg.certs_dir is None:
            raise ValueError(
                "instances with spawn: false need certs_dir (`prfaas certs`; each machine "
                "gets its cluster's bundle), or control_plane.insecure: true"
            )
        if cfg.control_plane.port == 0:
            raise ValueError(
                "instances with spawn: false need control_plane.port (their --gateway URL)"
            )


def _check_links_secure(cfg: DeployConfig) -> None:
    """Every cross-cluster KV path has a configured link with TLS, or one that says
    ``insecure: true``: without a link, KV would cross in plaintext and unpaced."""
    for link in cfg.links:
        if not link.tls and not link.insecure:
            raise ValueError(
                f"link {link.src}->{link.dst}: tls: false would send KV in plaintext; set "
                "tls: true (or insecure: true to allow it)"
            )
    configured = {(link.src, link.dst) for link in cfg.links}
    for src, dst in kv_paths(cfg):
        if (src, dst) not in configured:
            raise ValueError(
                f"no link {src}->{dst}: cross-cluster KV needs a link with tls: true "
                "(or tls: false with insecure: true)"
            )


def warn_insecure_links(cfg: DeployConfig) -> list[str]:
    """Log a WARNING naming each link that carries KV in plaintext by choice
    (``insecure: true``); returns their names (src->dst)."""
    names = [f"{link.src}->{link.dst}" for link in cfg.links if link.insecure]
    for name in names:
        logger.warning("INSECURE: link %s carries KV in plaintext, unauthenticated by TLS", name)
    return names


def _check_dtypes_agree(clusters: list[ClusterSpec]) -> None:
    """KV crosses between instances only in one dtype (it is in the model fingerprint), and
    ``auto`` means float32 on a CPU but bfloat16 on a GPU: instances on different devices
    must name one dtype explicitly."""
    pairs = {(c.device_of(i), c.dtype_of(i)) for c in clusters for i in c.instances}
    devices, dtypes = {d for d, _ in pairs}, {t for _, t in pairs}
    if len(dtypes) > 1 or (len(devices) > 1 and dtypes == {"auto"}):
        shown = ", ".join(f"{d}/{t}" for d, t in sorted(pairs))
        raise ValueError(
            f"instances run on {shown}: KV moves between instances only in one dtype; set the "
            "same explicit dtype (e.g. dtype: float32) on every cluster"
        )


def default_config() -> DeployConfig:
    return DeployConfig(
        clusters=[
            ClusterSpec(
                name="local",
                kind="pd",
                instances=[
                    InstanceSpec(name="pd-p-0", role="prefill"),
                    InstanceSpec(name="pd-d-0", role="decode"),
                ],
            ),
            ClusterSpec(
                name="remote",
                kind="prfaas",
                instances=[InstanceSpec(name="prfaas-0", role="prefill")],
            ),
        ],
        links=[LinkSpec(src="remote", dst="local", rate_gbps=1.0, rtt_ms=10.0)],
    )


class DeployConfigError(ValueError):
    pass


def load_deploy_config(path: Path) -> DeployConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DeployConfigError(f"{path}: {e}") from e
    try:
        cfg = DeployConfig.model_validate(raw)
    except ValidationError as e:
        lines = [
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()
        ]
        raise DeployConfigError(f"{path}: invalid deployment:\n  " + "\n  ".join(lines)) from e
    if cfg.certs_dir is not None and not cfg.certs_dir.is_absolute():
        cfg = cfg.model_copy(update={"certs_dir": path.parent / cfg.certs_dir})  # file-relative
    for key in ("audit_log", "usage_log"):  # file-relative
        log = getattr(cfg, key)
        if log is not None and not log.is_absolute():
            cfg = cfg.model_copy(update={key: path.parent / log})
    return cfg


def open_kv_index(spec: KvIndexSpec) -> KvIndexBackend:
    """The kv index a deployment's gateway uses; a Redis one must answer now."""
    if spec.backend == "memory":
        return KvIndex()
    from prfaas.router.redis_index import RedisKvIndex  # imports redis

    assert spec.url is not None  # validated by KvIndexSpec
    index = RedisKvIndex(spec.url, spec.prefix)
    index.check()
    return index


def binds_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) resolves to a loopback address: only this
    machine can reach a gateway bound there."""
    import ipaddress
    import socket

    return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
