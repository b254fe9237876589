"""What a request tells the connector, through vLLM's per-request ``kv_transfer_params``.

Prefill instance (the producer)::

    {"prfaas_transfer_id": "<id>", "prfaas_send_to": "<host>:<port>"}

computes the prompt and pushes its KV, as transfer ``<id>``, to the decode instance whose
KvReceiver listens at ``host:port`` (the request runs with ``max_tokens=1``). An optional
``"prfaas_link": {"name", "codec", "connections", "tls", "server_name"}`` names the link it
goes over (a prfaas worker passes its ``KvTarget``); without it, the connector's own
configured link is used.

Decode instance (the consumer)::

    {"prfaas_transfer_id": "<id>"}

expects transfer ``<id>`` at its own receiver and loads the prompt's KV from it instead of
computing it. A request without these keys is served as if there were no connector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prfaas.transfer.wire import MAX_REQUEST_ID_BYTES

TRANSFER_ID = "prfaas_transfer_id"
SEND_TO = "prfaas_send_to"
LINK = "prfaas_link"
MAX_NAME_CHARS = 256

Address = tuple[str, int]


@dataclass(frozen=True)
class LinkChoice:
    """The link one transfer goes over, as the router chose it (``messages.KvTarget``)."""

    name: str
    codec: str = "raw"
    connections: int = 1
    tls: bool = False
    server_name: str = ""  # the receiver's cluster: its TLS identity

    @staticmethod
    def parse(value: object) -> LinkChoice:
        if not isinstance(value, dict) or set(value) - {
            "name",
            "codec",
            "connections",
            "tls",
            "server_name",
        }:
            raise ValueError(f"{LINK} must be an object with name, codec, connections, tls")
        name, codec = value.get("name"), value.get("codec", "raw")
        server_name = value.get("server_name", "")
        connections, tls = value.get("connections", 1), value.get("tls", False)
        for key, text in (("name", name), ("codec", codec), ("server_name", server_name)):
            if not isinstance(text, str) or len(text) > MAX_NAME_CHARS:
                raise ValueError(f"{LINK}.{key} must be a string of at most {MAX_NAME_CHARS}")
        if not name:
            raise ValueError(f"{LINK}.name must not be empty")
        if not isinstance(connections, int) or isinstance(connections, bool):
            raise ValueError(f"{LINK}.connections must be an integer")
        if not isinstance(tls, bool):
            raise ValueError(f"{LINK}.tls must be true or false")
        assert isinstance(name, str) and isinstance(codec, str) and isinstance(server_name, str)
        return LinkChoice(name, codec, connections, tls, server_name)


@dataclass(frozen=True)
class HandoffParams:
    transfer_id: str
    send_to: Address | None  # set on the prefill instance: where to push
    link: LinkChoice | None = None  # None: the connector's configured link

    @staticmethod
    def parse(params: dict[str, Any] | None) -> HandoffParams | None:
        """None when the request takes no part in a hand-off; ValueError if malformed."""
        if not params or TRANSFER_ID not in params:
            return None
        transfer_id = params[TRANSFER_ID]
        if not isinstance(transfer_id, str) or not transfer_id:
            raise ValueError(f"{TRANSFER_ID} must be a non-empty string")
        if len(transfer_id.encode()) > MAX_REQUEST_ID_BYTES:
            raise ValueError(f"{TRANSFER_ID} exceeds {MAX_REQUEST_ID_BYTES} bytes")
        send_to = params.get(SEND_TO)
        link = None if params.get(LINK) is None else LinkChoice.parse(params[LINK])
        address = None if send_to is None else parse_address(send_to)
        return HandoffParams(transfer_id, address, link)


def salt_bytes(cache_salt: str | None) -> bytes:
    """The tenant salt a vLLM ``cache_salt`` stands for: a prfaas worker passes the tenant
    salt as hex (``tenant_salt_hex``); any other string is taken as its UTF-8 bytes."""
    if not cache_salt:
        return b""
    try:
        return bytes.fromhex(cache_salt)
    except ValueError:
        return cache_salt.encode()


def parse_address(text: object) -> Address:
    if not isinstance(text, str) or len(text) > 300:
        raise ValueError(f"{SEND_TO} must be a 'host:port' string")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{SEND_TO} {text!r} is not 'host:port'")
    return host.strip("[]"), int(port)
