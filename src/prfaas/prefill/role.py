"""The prefill role: compute a prompt's KV and ship it to the decode instance the router
named, over the link between their clusters (paced, optionally compressed, TLS across
clusters), each layer leaving as soon as the prompt's last chunk has written it
(``LayerStream``). The worker calls ``run`` once per command.

The role owns one ``Link`` per (link, codec, connections, TLS identity) it has sent on; each
link's ``LinkMonitor`` is the one measurement of its egress, reported by ``link_reports``
in the worker's heartbeats."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from dataclasses import dataclass

from prfaas.engine.async_engine import AsyncEngine
from prfaas.kvcache.hashing import prompt_hash, root_hash
from prfaas.messages import KvTarget, LinkReport, PrefillCommand, PrefillResult
from prfaas.prefill.kv_export import logprob_arrays, stream_header
from prfaas.prefill.layer_stream import LayerStream
from prfaas.sampling import to_sampling_params
from prfaas.transfer.config import Deadlines, LinkConfig
from prfaas.transfer.errors import TransferError
from prfaas.transfer.link import Link
from prfaas.transfer.monitor import LinkStats
from prfaas.transfer.sender import KvSender, TransferStats
from prfaas.transfer.tls import PLAINTEXT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkSettings:
    """This worker's egress caps per link name (the cross-cluster link is paced)."""

    rate_gbps: dict[str, float]


class PrefillRole:
    def __init__(
        self,
        engine: AsyncEngine,
        links: LinkSettings,
        tls: ssl.SSLContext | None,
        auth_key: bytes | None = None,  # kv_auth_key(cluster token), proven on every connection
    ) -> None:
        self.engine = engine
        self.links = links
        self.tls = tls
        self.auth_key = auth_key
        self._senders: dict[tuple[str, str, int, bool, str], KvSender] = {}
        self._lock = threading.Lock()
        self._streams: set[LayerStream] = set()  # layer-wise transfers of running commands

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
                    auth_key=self.auth_key,
                )
            return sender

    def link_reports(self) -> list[LinkReport]:
        """Egress per link name as its monitors measured it, summed over the senders that
        share the name (goodput: the best backlogged transfer among them)."""
        with self._lock:
            stats = [sender.link.stats() for sender in self._senders.values()]
        by_name: dict[str, list[LinkStats]] = {}
        for s in stats:
            by_name.setdefault(s.name, []).append(s)
        return [
            LinkReport(
                link=name,
                bytes_sent=sum(s.bytes_sent for s in group),
                rate_gbps=sum(s.goodput_gbps for s in group),
                goodput_gbps=max(s.backlogged_goodput_gbps or 0.0 for s in group),
                backlog_bytes=sum(s.backlog_bytes for s in group),
                transfers_open=sum(s.transfers_open for s in group),
                cap_gbps=group[0].rate_cap_gbps,
                capacity_gbps=_capacity_gbps(group),
                busy_fraction=max(s.busy_fraction for s in group),
            )
            for name, group in by_name.items()
        ]

    def prompt_hash(self, prompt_token_ids: list[int], tenant_salt: bytes) -> bytes:
        """What the transfer header carries: the prompt's hash under this model and tenant."""
        root = root_hash(self.engine.fingerprint, tenant_salt)
        return prompt_hash(prompt_token_ids, self.engine.block_size, root)

    @property
    def num_sending(self) -> int:
        """Commands whose KV is being sent now (leak checks)."""
        return sum(1 for s in self._streams if s.sending)

    async def run(self, cmd: PrefillCommand) -> PrefillResult:
        """Prefill and stream; on any failure the transfer is aborted and the engine has
        freed the request's blocks before this returns ok=False."""
        started = time.monotonic()
        sender = self.sender(cmd.target)
        deadline = started + cmd.deadline_s
        header = stream_header(
            self.engine.layout,
            self.engine.fingerprint,
            self.engine.kv_dtype,
            len(cmd.prompt_token_ids),
            cmd.request_id,
            cmd.target.codec,
            self.prompt_hash(cmd.prompt_token_ids, bytes.fromhex(cmd.tenant_salt_hex)),
            logprobs=cmd.params.logprobs,
            prompt_logprobs=cmd.params.prompt_logprobs,
        )
        stream = LayerStream(sender, (cmd.target.host, cmd.target.port), header, deadline)
        self._streams.add(stream)
        try:
            return await self._stream_prefill(cmd, stream, started, deadline)
        finally:
            self._streams.discard(stream)

    async def _stream_prefill(
        self, cmd: PrefillCommand, stream: LayerStream, started: float, deadline: float
    ) -> PrefillResult:
        try:
            done = await asyncio.wait_for(
                self.engine.prefill_streamed(
                    cmd.prompt_token_ids,
                    to_sampling_params(cmd.params),
                    cmd.request_id,
                    stream,
                    tenant_salt=bytes.fromhex(cmd.tenant_salt_hex),
                ),
                max(0.0, deadline - time.monotonic()),
            )
        except TimeoutError:  # the engine aborted the request (blocks freed) on cancellation
            stream.abort()
            error = f"prefill missed its {cmd.deadline_s}s deadline"
            return PrefillResult(request_id=cmd.request_id, ok=False, error=error)
        except BaseException:
            stream.abort()
            raise
        try:
            extra = logprob_arrays(
                done.first_logprobs,
                done.prompt_logprobs,
                len(cmd.prompt_token_ids),
                cmd.params.logprobs,
                cmd.params.prompt_logprobs,
            )
            stats = await asyncio.to_thread(stream.finish, done.first_token_id, extra)
        except TransferError as e:
            return _failed(cmd, e)
        return _sent(cmd, stats, started, done.num_cached_tokens)


def _failed(cmd: PrefillCommand, error: TransferError) -> PrefillResult:
    logger.warning(
        "transfer %s to %s:%d failed: %s", cmd.request_id, cmd.target.host, cmd.target.port, error
    )
    return PrefillResult(request_id=cmd.request_id, ok=False, error=str(error))


def _sent(
    cmd: PrefillCommand, stats: TransferStats, started: float, cached_tokens: int
) -> PrefillResult:
    return PrefillResult(
        request_id=cmd.request_id,
        ok=True,
        kv_bytes=stats.raw_bytes,
        wire_bytes=stats.wire_bytes,
        transfer_s=stats.seconds,
        seconds=time.monotonic() - started,
        cached_tokens=cached_tokens,
    )


def _capacity_gbps(group: list[LinkStats]) -> float | None:
    """Senders sharing a link name that measured it: concurrent backlogged senders split a
    shared link, so their capacities add up; None if none measured."""
    measured = [s.capacity_gbps for s in group if s.capacity_gbps is not None]
    return sum(measured) if measured else None
