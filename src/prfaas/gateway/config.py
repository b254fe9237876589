"""The front door's frozen configuration, validated on construction."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from prfaas.tenancy.limits import TenantLimits


@dataclass(frozen=True)
class GatewayConfig:
    """How the HTTP front door authenticates, admits and bounds requests.

    ``api_keys`` maps each API key to its tenant; empty means one default tenant and no
    authentication. ``server_secret`` keys the tenant salt (HMAC-SHA256(secret, tenant));
    gateways that share a kv index must share it. Empty: a random secret per process.
    """

    api_keys: Mapping[str, str] = field(default_factory=dict)
    server_secret: bytes = b""
    default_tenant: str = "default"
    max_body_bytes: int = 4 * 2**20
    # Slow clients cannot hold a slot for ever: the whole body must arrive within
    # body_timeout_s of the headers (408 after), and one SSE write may wait for a reader that
    # stopped reading at most stream_write_timeout_s (then the request is aborted).
    body_timeout_s: float = 30.0
    stream_write_timeout_s: float = 30.0
    # Admission (``admission.Admission``), the one place these are set:
    max_in_flight: int = 256  # requests admitted at once; beyond: 429 + Retry-After
    max_inflight_per_decode: int = 32  # requests one decode instance holds (waiting + running)
    max_queued: int = 256  # requests waiting at the gateway for a decode slot
    # Time-to-live of a request waiting to be admitted: for a decode slot, or (a backend
    # without decode instances, e.g. one in-process engine) until its first token; past it:
    # 429 + Retry-After. None: wait as long as it takes.
    queue_ttl_s: float | None = None
    retry_after_s: float = 1.0
    # Per tenant (by name): requests/s and tokens/min token buckets (``tenancy.limits``);
    # a tenant not named here is unlimited.
    tenant_limits: Mapping[str, TenantLimits] = field(default_factory=dict)
    usage_log: Path | None = None  # one JSON line per finished request (``tenancy.usage``)

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_keys", MappingProxyType(dict(self.api_keys)))
        object.__setattr__(self, "tenant_limits", MappingProxyType(dict(self.tenant_limits)))
        if not self.server_secret:
            object.__setattr__(self, "server_secret", os.urandom(32))
        if any(not k or not t for k, t in self.api_keys.items()):
            raise ValueError("API keys and tenant names must be non-empty")
        if self.max_in_flight <= 0 or self.max_inflight_per_decode <= 0 or self.max_queued < 0:
            raise ValueError(
                "max_in_flight and max_inflight_per_decode must be positive, max_queued >= 0"
            )
        if self.retry_after_s <= 0:
            raise ValueError("retry_after_s must be positive")
        if self.queue_ttl_s is not None and self.queue_ttl_s <= 0:
            raise ValueError("queue_ttl_s must be positive")
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        if self.body_timeout_s <= 0 or self.stream_write_timeout_s <= 0:
            raise ValueError("body_timeout_s and stream_write_timeout_s must be positive")
