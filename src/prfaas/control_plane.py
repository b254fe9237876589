"""The control plane between gateways and workers: HTTPS with mutual TLS 1.3 from the bundles
`prfaas certs` writes, or plain HTTP by an explicit, loudly logged choice (``insecure``).

Identities: a worker's certificate names its cluster; gateways hold the ``GATEWAY`` one.
- A worker's control server takes requests only from a gateway's certificate.
- A gateway's control listener takes a registration only from a worker whose certificate
  names the cluster it registers into (residency rests on that, not on the cluster token),
  and a heartbeat only from the cluster the worker registered in.
- A gateway calls a worker only if the worker's certificate names the cluster it registered
  in (``server_hostname``), whatever address it advertised; a worker checks that it reaches
  a gateway the same way.

uvicorn does not hand the client certificate to the app: ``PeerProtocol`` is its HTTP
protocol plus one step: once the TLS handshake is done it puts the peer's verified name in
each request's scope, where ``peer_of`` reads it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from prfaas.transfer.tls import GATEWAY, TlsConfig, client_context, peer_name, server_context

logger = logging.getLogger(__name__)
_PEER_KEY = "prfaas_peer"


@dataclass(frozen=True)
class ControlTls:
    """One process's identity on the control plane: its bundle and the name it holds."""

    tls: TlsConfig
    name: str

    @staticmethod
    def from_dir(certs_dir: Path, name: str) -> ControlTls:
        return ControlTls(TlsConfig.from_dir(certs_dir, name), name)

    def server_context(self) -> ssl.SSLContext:
        """Serving: a client certificate signed by the CA is required (TLS 1.3)."""
        return server_context(self.tls)

    def client_context(self) -> ssl.SSLContext:
        """Calling: present ours, verify the server's against the CA and the expected name
        (pass it as ``server_hostname`` / httpx's ``sni_hostname`` extension)."""
        return client_context(self.tls)

    def uvicorn_options(self) -> dict[str, Any]:
        """``uvicorn.Config`` keywords that serve this identity with mutual TLS and tell the
        app each request's peer (``peer_of``)."""
        context = self.server_context()
        return {"http": PeerProtocol, "ssl_context_factory": lambda _config, _default: context}


def warn_insecure(who: str) -> None:
    """The loud line an ``insecure`` control plane logs at start (and once is not enough to
    miss: WARNING level, the word INSECURE first)."""
    logger.warning(
        "INSECURE: the control plane of %s is plain HTTP: prompts' token ids and the cluster "
        "token cross unencrypted, and worker registrations are not bound to certificates",
        who,
    )


def peer_of(request: Request) -> str | None:
    """The verified certificate name of the client that sent ``request`` (a cluster or
    ``GATEWAY``); None when it came over plain HTTP."""
    name = request.scope.get("extensions", {}).get(_PEER_KEY)
    return name if isinstance(name, str) else None


class PeerProtocol(H11Protocol):
    """uvicorn's h11 protocol; each request on a TLS connection carries the peer's name.
    (uvicorn builds every request's cycle from ``self.app``, after ``connection_made``.)"""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = peer_name(transport.get_extra_info("ssl_object"))
        app = self.app

        async def with_peer(scope: Scope, receive: Receive, send: Send) -> None:
            scope.setdefault("extensions", {})[_PEER_KEY] = peer
            await app(scope, receive, send)

        self.app = with_peer


__all__ = ["GATEWAY", "ControlTls", "PeerProtocol", "peer_of", "warn_insecure"]
