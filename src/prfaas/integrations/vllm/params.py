"""What a request tells the connector, through vLLM's per-request ``kv_transfer_params``.

Prefill instance (the producer)::

    {"prfaas_transfer_id": "<id>", "prfaas_send_to": "<host>:<port>"}

computes the prompt and pushes its KV, as transfer ``<id>``, to the decode instance whose
KvReceiver listens at ``host:port`` (the request runs with ``max_tokens=1``).

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

Address = tuple[str, int]


@dataclass(frozen=True)
class HandoffParams:
    transfer_id: str
    send_to: Address | None  # set on the prefill instance: where to push

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
        return HandoffParams(transfer_id, None if send_to is None else parse_address(send_to))


def parse_address(text: object) -> Address:
    if not isinstance(text, str) or len(text) > 300:
        raise ValueError(f"{SEND_TO} must be a 'host:port' string")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{SEND_TO} {text!r} is not 'host:port'")
    return host.strip("[]"), int(port)
