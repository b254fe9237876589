"""The cluster backend's frozen settings: how dispatch reaches workers and ships KV."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from prfaas.messages import KvTarget, WorkerInfo


def direct_kv_target(source_cluster: str, receiver: WorkerInfo) -> KvTarget:
    """KV straight to ``receiver``'s KV receiver, no TLS, whatever the source cluster."""
    return KvTarget(host=receiver.kv_host, port=receiver.kv_port, server_name=receiver.cluster)


@dataclass(frozen=True)
class BackendSettings:
    model_name: str
    cluster_token: str
    kv_deadline_s: float = 30.0
    # A decode stream that sends nothing this long ends with an error (its worker's missed
    # heartbeats end it sooner); above kv_deadline_s plus a local prefill.
    stream_stall_s: float = 120.0
    # Where KV from a source cluster reaches a decode worker's receiver (the deployment's
    # link routes); by default straight to it.
    kv_target: Callable[[str, WorkerInfo], KvTarget] = direct_kv_target
    residency: dict[str, frozenset[str]] = field(default_factory=dict)  # tenant -> clusters
    # tenant -> its regions, best first (``router.regions``); absent: the deployment's order
    tenant_regions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The gateway's client context for worker calls (mutual TLS); None: plain HTTP.
    worker_tls: ssl.SSLContext | None = None
