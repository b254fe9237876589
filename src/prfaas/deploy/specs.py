"""The sections of deploy.yaml (``deploy.config.DeployConfig``): clusters and instances,
links, the control plane, tenants, the policy and its control loop, the kv index, overload.
Each is strict (unknown keys are errors) and validates its own fields."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prfaas.gateway.config import GatewayConfig
from prfaas.router.control import ControlConfig
from prfaas.tenancy.limits import TenantLimits


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Dtype = Literal["auto", "float32", "bfloat16", "float16"]  # weights and KV (EngineConfig.dtype)
Engine = Literal["reference", "vllm"]  # the engine an instance runs (worker.config.EngineKind)
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?")


def _check_device(value: str | None) -> str | None:
    if value is not None and not DEVICE_PATTERN.fullmatch(value):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


class InstanceSpec(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    role: Literal["prefill", "decode"]
    spawn: bool = True  # False: already running elsewhere; it registers itself
    device: str | None = None  # None: the cluster's
    dtype: Dtype | None = None  # None: the cluster's
    num_threads: int | None = Field(None, ge=1, le=1024)  # torch CPU threads; None: torch's
    kv_cache_gb: float | None = Field(None, gt=0, le=4096)  # KV pool (GiB); None: the worker's
    engine: Engine | None = None  # None: the cluster's

    _device = field_validator("device")(_check_device)


class ClusterSpec(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["pd", "prfaas"]
    instances: list[InstanceSpec]
    device: str = "auto"  # auto: cuda where there is one, else cpu
    dtype: Dtype = "auto"  # auto: float32 on cpu, bfloat16 on cuda
    engine: Engine | None = None  # None: the deployment's
    # Its region (``deploy.regions``); None: a region of its own, named as the cluster.
    region: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")

    _device = field_validator("device")(_check_device)

    def device_of(self, inst: InstanceSpec) -> str:
        return inst.device or self.device

    def dtype_of(self, inst: InstanceSpec) -> str:
        return inst.dtype or self.dtype


class LinkSpec(_Strict):
    """KV from ``src`` to ``dst``. ``emulate`` puts a link emulator in the path (rate,
    RTT); otherwise the rate is the sender's pacing cap only. ``tls: false`` needs
    ``insecure: true`` beside it: KV in plaintext is a choice made per path, on the record."""

    src: str
    dst: str
    rate_gbps: float | None = Field(None, gt=0)
    rtt_ms: float = Field(0.0, ge=0)
    codec: str = "raw"
    connections: int = Field(2, ge=1, le=16)
    tls: bool = True
    insecure: bool = False
    emulate: bool = True

    @model_validator(mode="after")
    def _insecure_only_without_tls(self) -> LinkSpec:
        if self.insecure and self.tls:
            raise ValueError(f"link {self.src}->{self.dst}: insecure: true needs tls: false")
        return self


class ControlPlaneSpec(_Strict):
    """Gateway <-> worker calls: HTTPS with mutual TLS from ``certs_dir``'s bundles, workers
    registering on the gateway's control listener (``host``:``port``, the URL a worker's
    ``--gateway`` names). ``insecure: true``: plain HTTP, registration on the public port
    with the cluster token alone, logged as INSECURE at start."""

    host: str | None = None  # default: the gateway's host
    port: int = Field(0, ge=0, le=65535)  # 0: a free port (every worker spawned here)
    insecure: bool = False


class TenantSpec(_Strict):
    name: str = Field(min_length=1, max_length=64)
    api_keys: list[str] = Field(default_factory=list)
    clusters: list[str] | None = None  # residency: the only clusters it may use
    # Residency by region, in order of preference (``deploy.regions``); None: every region.
    regions: list[str] | None = Field(None, min_length=1, max_length=64)
    # Token-bucket limits (``tenancy.limits``); None: unlimited. Bursts: one second of
    # requests, one minute of tokens unless set.
    requests_per_s: float | None = Field(None, gt=0, le=1e6)
    tokens_per_min: float | None = Field(None, gt=0, le=1e12)
    burst_requests: float | None = Field(None, gt=0, le=1e6)
    burst_tokens: float | None = Field(None, gt=0, le=1e12)

    def limits(self) -> TenantLimits | None:
        values = (self.requests_per_s, self.tokens_per_min, self.burst_requests, self.burst_tokens)
        if all(v is None for v in values):
            return None
        try:
            return TenantLimits(
                self.requests_per_s, self.tokens_per_min, self.burst_requests, self.burst_tokens
            )
        except ValueError as e:
            raise ValueError(f"tenant {self.name!r}: {e}") from None


class ControlSpec(_Strict):
    """The live dual-timescale control loop (docs/serving.md, "Start-up profiling")."""

    enabled: bool = True
    # Defaults: the controller's (``ControlConfig``).
    short_interval_s: float = Field(ControlConfig.short_interval_s, gt=0, le=3600)  # t, mode
    long_interval_s: float = Field(ControlConfig.long_interval_s, gt=0, le=86400)  # re-plan
    role_changes: bool = True  # apply the long tick's PD prefill/decode conversions
    # Off: policy.mode holds. On: the mode follows link use (abundant mode counts prefixes
    # cached in the other cluster and pulls them across before the prefill).
    adapt_mode: bool = False
    egress_smoothing: float = Field(0.5, gt=0, le=1)  # weight of the newest egress sample
    output_tokens: int = Field(256, ge=1, le=1 << 20)  # mean output length the planner assumes


class PolicySpec(_Strict):
    name: Literal["prfaas", "homogeneous", "naive"] = "prfaas"
    threshold_tokens: int | None = Field(None, ge=0)  # None: measured at start-up
    mode: Literal["scarce", "abundant"] = "scarce"
    control: ControlSpec = ControlSpec()
    # Prefill instance inside a cluster: least estimated TTFT (queue + incremental prefill +
    # transfer, in-flight counts kept at dispatch) or CHWBL on heartbeat loads.
    instance_choice: Literal["ttft", "chwbl"] = "ttft"
    balance_factor: float = Field(1.25, ge=1.0, le=10.0)  # the per-request load bound


class KvIndexSpec(_Strict):
    """Where the gateway keeps its kv index: in its own memory (the default), or in a Redis
    server that several gateways share (``url`` ``redis://host:port/db``, ``rediss://`` or
    ``unix://``; ``prefix`` namespaces this deployment's keys)."""

    backend: Literal["memory", "redis"] = "memory"
    url: str | None = Field(None, max_length=512)
    prefix: str = Field("prfaas", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")

    @model_validator(mode="after")
    def _url_matches_backend(self) -> KvIndexSpec:
        if self.backend == "memory" and self.url is not None:
            raise ValueError("url is only for backend 'redis'")
        if self.backend == "redis":
            if self.url is None:
                raise ValueError("backend 'redis' needs a url, e.g. redis://127.0.0.1:6379/0")
            if not self.url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(f"url {self.url!r}: expected redis://, rediss:// or unix://")
        return self


class OverloadSpec(_Strict):
    """Admission at the gateway: per decode worker in-flight cap, then a bounded queue
    with a time-to-live; beyond either, 429 with Retry-After. Slow clients: a body that takes
    longer than ``body_timeout_s`` is refused (408), a stream whose reader stops reading for
    ``stream_write_timeout_s`` is aborted."""

    # Defaults: the gateway's (``GatewayConfig``), but a deployment's queue waits 5 s at most.
    max_inflight_per_decode: int = Field(GatewayConfig.max_inflight_per_decode, ge=1)
    max_queued: int = Field(GatewayConfig.max_queued, ge=0)
    queue_ttl_s: float = Field(5.0, gt=0)
    retry_after_s: float = Field(GatewayConfig.retry_after_s, gt=0)
    body_timeout_s: float = Field(GatewayConfig.body_timeout_s, gt=0)
    stream_write_timeout_s: float = Field(GatewayConfig.stream_write_timeout_s, gt=0)
