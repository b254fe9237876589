"""The connector's configuration: vLLM's ``kv_connector_extra_config``, validated once.

Keys (all optional)::

    listen_host, listen_port   the decode instance's KvReceiver (port 0: any free port)
    certs_dir, cluster         mutual TLS: ``prfaas certs`` output and this instance's cluster
    peer_cluster               the name the receiver's certificate must carry (sender side)
    auth_token_file            a file holding the cluster token (HMAC auth on every connection)
    rate_gbps, connections, codec, chunk_bytes      the link to the decode instance
    link_rates_gbps            {link name: cap}: pacing of a transfer that names its link
    send_timeout_s             a transfer's total deadline on the prefill instance
    load_timeout_s             how long a decode instance waits for KV before it recomputes
    fingerprint                the model's fingerprint (hex); default: computed from its folder
    events_file                append one JSON line per ended hand-off here (events.py)

Without ``certs_dir`` the transport is plaintext, which ``KvReceiver`` only accepts quietly on
loopback. The token is read from a file so that it never appears in vLLM's logged config.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from prfaas.integrations.vllm.params import LinkChoice
from prfaas.transfer.auth import kv_auth_key
from prfaas.transfer.config import Deadlines, LinkConfig
from prfaas.transfer.tls import (
    PLAINTEXT,
    Plaintext,
    TlsConfig,
    client_context,
    server_context,
)

MAX_TOKEN_FILE_BYTES = 4096


@dataclass(frozen=True)
class ConnectorConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    certs_dir: str | None = None
    cluster: str | None = None
    peer_cluster: str | None = None
    auth_token_file: str | None = None
    rate_gbps: float | None = None
    connections: int = 2
    codec: str = "raw"
    chunk_bytes: int = 1 << 20
    send_timeout_s: float = 60.0
    load_timeout_s: float = 60.0
    fingerprint: str | None = None
    events_file: str | None = None
    link_rates_gbps: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.listen_port < 65536:
            raise ValueError(f"listen_port {self.listen_port} is not a port")
        if self.certs_dir is not None and self.cluster is None:
            raise ValueError("certs_dir needs cluster (this instance's certificate name)")
        if min(self.send_timeout_s, self.load_timeout_s) <= 0:
            raise ValueError("send_timeout_s and load_timeout_s must be positive")
        if self.fingerprint is not None:
            bytes.fromhex(self.fingerprint)  # ValueError if not hex
        self.link_config()  # validates rate, connections, codec, chunk size

    @staticmethod
    def from_extra(extra: dict[str, Any]) -> ConnectorConfig:
        """From vLLM's ``kv_connector_extra_config``; unknown keys and wrong types refused."""
        known = {f.name: f for f in fields(ConnectorConfig)}
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise ValueError(f"unknown prfaas connector keys {unknown}; known: {sorted(known)}")
        for key, value in extra.items():
            if key == "link_rates_gbps":
                ok = value is None or (
                    isinstance(value, dict)
                    and all(
                        isinstance(k, str) and isinstance(v, int | float) and v > 0
                        for k, v in value.items()
                    )
                )
            elif key in ("rate_gbps", "send_timeout_s", "load_timeout_s"):
                ok = value is None or isinstance(value, int | float)
            elif key in ("listen_port", "connections", "chunk_bytes"):
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = value is None or isinstance(value, str)
            if not ok:
                raise ValueError(f"prfaas connector key {key!r}: bad value {value!r}")
        return ConnectorConfig(**extra)

    def link_config(self) -> LinkConfig:
        return LinkConfig(
            name=self.peer_cluster or "vllm-peer",
            rate_gbps=self.rate_gbps,
            connections=self.connections,
            codec=self.codec,
            chunk_bytes=self.chunk_bytes,
        )

    def link_for(self, choice: LinkChoice) -> LinkConfig:
        """The link a transfer names: its codec and connections, this instance's cap."""
        return LinkConfig(
            name=choice.name,
            rate_gbps=(self.link_rates_gbps or {}).get(choice.name),
            connections=choice.connections,
            codec=choice.codec,
            chunk_bytes=self.chunk_bytes,
        )

    def deadlines(self) -> Deadlines:
        """A connection may wait for the prefill's layers (the stream opens at the first
        layer) as long as a transfer may take: on a loaded CPU host a prefill instance can
        compute for longer than the transport's default stall window."""
        timeout_s = max(self.send_timeout_s, self.load_timeout_s)
        return Deadlines(stall_s=timeout_s, total_s=timeout_s)

    def _tls(self) -> TlsConfig | None:
        if self.certs_dir is None:
            return None
        assert self.cluster is not None
        return TlsConfig.from_dir(Path(self.certs_dir), self.cluster)

    def server_tls(self) -> ssl.SSLContext | Plaintext:
        tls = self._tls()
        return PLAINTEXT if tls is None else server_context(tls)

    def client_tls(self) -> ssl.SSLContext | Plaintext:
        tls = self._tls()
        return PLAINTEXT if tls is None else client_context(tls)

    def auth_key(self) -> bytes | None:
        if self.auth_token_file is None:
            return None
        path = Path(self.auth_token_file)
        if path.stat().st_size > MAX_TOKEN_FILE_BYTES:
            raise ValueError(f"{path}: a token file over {MAX_TOKEN_FILE_BYTES} bytes")
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"{path}: empty cluster token")
        return kv_auth_key(token)
