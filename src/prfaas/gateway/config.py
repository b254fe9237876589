"""The gateway's frozen configuration, validated on construction."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


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
    max_in_flight: int = 256  # requests admitted at once; beyond: 429 + Retry-After
    retry_after_s: float = 1.0
    max_body_bytes: int = 4 * 2**20
    # Time-to-live of a request waiting for the backend to admit it (for a LocalBackend: until
    # its first token); past it: 429 + Retry-After. None: wait as long as it takes.
    queue_ttl_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_keys", MappingProxyType(dict(self.api_keys)))
        if not self.server_secret:
            object.__setattr__(self, "server_secret", os.urandom(32))
        if any(not k or not t for k, t in self.api_keys.items()):
            raise ValueError("API keys and tenant names must be non-empty")
        if self.max_in_flight <= 0:
            raise ValueError("max_in_flight must be positive")
        if self.retry_after_s <= 0:
            raise ValueError("retry_after_s must be positive")
        if self.queue_ttl_s is not None and self.queue_ttl_s <= 0:
            raise ValueError("queue_ttl_s must be positive")
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)
