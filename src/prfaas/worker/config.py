"""A worker's frozen configuration: its instance's name, cluster and role, where it listens,
the gateways it reports to, the cluster token, and the engine it hosts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prfaas.config import EngineConfig
from prfaas.messages import Role

EngineKind = Literal["reference", "vllm"]
ENGINE_KINDS: tuple[EngineKind, ...] = ("reference", "vllm")


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    cluster: str
    role: Role
    host: str
    port: int
    gateway_urls: tuple[str, ...]  # every gateway it registers and heartbeats with
    cluster_token: str
    engine: EngineConfig
    kv_host: str = "127.0.0.1"
    kv_port: int = 0
    certs_dir: Path | None = None  # its cluster's bundle: mutual TLS for KV and control
    insecure_control: bool = False  # plain HTTP to and from the gateway, even with certs
    link_rate_gbps: dict[str, float] = field(default_factory=dict)
    parent_pid: int | None = None  # exit when this process (the launcher) is gone
    drain_timeout_s: float = 120.0  # a role switch gives up if requests still run by then
    engine_kind: EngineKind = "reference"  # vllm: integrations/vllm/instance.py

    def __post_init__(self) -> None:
        if self.drain_timeout_s <= 0:
            raise ValueError(f"drain_timeout_s must be positive, got {self.drain_timeout_s}")
        if self.engine_kind not in ENGINE_KINDS:
            raise ValueError(f"engine must be one of {ENGINE_KINDS}, got {self.engine_kind!r}")
