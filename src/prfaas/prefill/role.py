"""The prefill role: compute a prompt's KV, then ship it to the decode instance the router
named, over the link between their clusters (paced, optionally compressed, TLS across
clusters). The worker's HTTP layer calls ``run`` once per command."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from dataclasses import dataclass

from prfaas.engine.async_engine import AsyncEngine
from prfaas.messages import KvTarget, PrefillCommand, PrefillResult
from prfaas.prefill.kv_export import payload_to_wire
from prfaas.sampling import to_sampling_params
from prfaas.transfer.config import Deadlines, LinkConfig
from prfaas.transfer.errors import TransferError
from prfaas.transfer.link import Link
from prfaas.transfer.sender import KvSender
from prfaas.transfer.tls import PLAINTEXT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkSettings:
    """This worker's egress caps per link name (the cross-cluster link is paced)."""

    rate_gbps: dict[str, float]


class PrefillRole:
    def __init__(
        self, engine: AsyncEngine, links: LinkSettings, tls: ssl.SSLContext | None
    ) -> None:
        self.engine = engine
        self.links = links
        self.tls = tls
        self._senders: dict[tuple[str, str, int, bool, str], KvSender] = {}
        self._lock = threading.Lock()
        self.num_sending = 0  # commands whose KV is being sent now (leak checks)

    def sender(self, target: KvTarget) -> KvSender:
        key = (target.link, target.codec, target.connections, target.tls, target.server_name)
        with self._lock:
            sender = self._senders.get(key)
            if sender is None:
                if target.tls and self.tls is None:
                    raise TransferError(f"link {target.link} needs TLS; no certificates here")
                link = Link(
                    LinkConfig(
                        name=target.link,
                        rate_gbps=self.links.rate_gbps.get(target.link),
                        connections=target.connections,
                        codec=target.codec,
                    )
                )
                sender = self._senders[key] = KvSender(
                    link,
                    tls=self.tls if target.tls and self.tls else PLAINTEXT,
                    server_name=target.server_name or None,
                    deadlines=Deadlines(first_byte_s=15.0, stall_s=15.0, total_s=300.0),
                )
            return sender

    def link_stats(self) -> dict[str, float]:
        """Measured goodput per link (Gbps), for the gateway's metrics and control loop."""
        with self._lock:
            senders = list(self._senders.values())
        out: dict[str, float] = {}
        for s in senders:
            stats = s.link.stats()
            out[s.link.config.name] = max(out.get(s.link.config.name, 0.0), stats.goodput_gbps)
        return out

    async def run(self, cmd: PrefillCommand) -> PrefillResult:
        started = time.monotonic()
        payload = await self.engine.prefill(
            cmd.prompt_token_ids,
            to_sampling_params(cmd.params),
            cmd.request_id,
            tenant_salt=bytes.fromhex(cmd.tenant_salt_hex),
        )
        header, arrays = payload_to_wire(payload, cmd.request_id, cmd.target.codec)
        sender = self.sender(cmd.target)
        deadline = started + cmd.deadline_s
        self.num_sending += 1
        try:
            stats = await asyncio.to_thread(
                sender.send,
                (cmd.target.host, cmd.target.port),
                header,
                arrays,
                retries=1,
                deadline_s=deadline,
            )
        except TransferError as e:
            logger.warning(
                "transfer %s to %s:%d failed: %s",
                cmd.request_id,
                cmd.target.host,
                cmd.target.port,
                e,
            )
            return PrefillResult(request_id=cmd.request_id, ok=False, error=str(e))
        finally:
            self.num_sending -= 1
        return PrefillResult(
            request_id=cmd.request_id,
            ok=True,
            kv_bytes=stats.raw_bytes,
            wire_bytes=stats.wire_bytes,
            transfer_s=stats.seconds,
            seconds=time.monotonic() - started,
        )
