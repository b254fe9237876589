"""The cluster backend: route each request, start the decode stream, ship the prefill.

For every request: derive its salted block hashes, ask the router (PrfaaS rule, cache
affinity, residency), open the token stream at the chosen decode worker (which reserves
blocks and waits for KV), and tell the chosen prefill worker to compute the prompt and ship
its KV to that decode worker over the link between their clusters. If the KV never comes,
the decode worker prefills locally; the stream still completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from prfaas.engine.outputs import TokenDelta
from prfaas.gateway.audit import AuditLog, AuditRecord
from prfaas.gateway.backend import GenerationHandle, GenerationRequest, NoWorker
from prfaas.gateway.cache_pull import pull_prefix
from prfaas.gateway.capacity import CapacityConfig, ClosingEvents, DecodeCapacity
from prfaas.gateway.fleet import WorkerFleet
from prfaas.gateway.worker_client import WorkerCallError, WorkerClient
from prfaas.kvcache.hashing import block_hashes, root_hash
from prfaas.messages import (
    DecodeCommand,
    KvFailed,
    KvTarget,
    PrefillCommand,
    PrefillResult,
    PullResult,
    TokenEvent,
    WorkerInfo,
)
from prfaas.router.router import Router
from prfaas.router.types import NoRouteError, RouteDecision, RouteRequest
from prfaas.sampling import to_spec

logger = logging.getLogger(__name__)
MAX_ROUTE_ATTEMPTS = 3
MAX_EVENT_BYTES = 1 << 20  # one NDJSON token event from a decode worker, at most


@dataclass(frozen=True)
class LinkRoute:
    """How KV from one source cluster reaches decode workers: through ``via[decode_name]``
    (a link emulator or a WAN address) when set, else straight to the worker's receiver."""

    name: str
    codec: str = "raw"
    connections: int = 1
    tls: bool = False
    via: dict[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendSettings:
    model_name: str
    cluster_token: str
    kv_deadline_s: float = 30.0
    links: dict[str, LinkRoute] = field(default_factory=dict)  # by source cluster
    residency: dict[str, frozenset[str]] = field(default_factory=dict)  # tenant -> clusters
    capacity: CapacityConfig = field(default_factory=CapacityConfig)


class ClusterBackend:
    def __init__(
        self,
        settings: BackendSettings,
        fleet: WorkerFleet,
        router: Router,
        tokenizer: Any,
        max_model_len: int,
        block_size: int,
        on_prefill: Callable[[RouteDecision, PrefillResult], None] | None = None,
        on_pull: Callable[[RouteDecision, PullResult], None] | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.router = router
        self.tokenizer = tokenizer
        self.model_name = settings.model_name
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.on_prefill = on_prefill
        self.on_pull = on_pull
        self.audit = audit
        self.capacity = DecodeCapacity(settings.capacity, self._num_decode)
        self.workers = WorkerClient(settings.cluster_token)
        self._tasks: set[asyncio.Task[None]] = set()

    def _num_decode(self) -> int:
        return sum(
            1
            for name, r in self.fleet.workers.items()
            if r.info.role == "decode" and not r.draining and self.fleet.healthy(name)
        )

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.workers.aclose()
        if self.audit is not None:
            self.audit.close()

    def route(self, req: GenerationRequest) -> RouteDecision:
        fingerprint = self.fleet.fingerprint
        if fingerprint is None:
            raise NoWorker("no worker has registered yet")
        hashes = block_hashes(
            req.prompt_token_ids, self.block_size, root_hash(fingerprint, req.tenant_salt)
        )
        try:
            return self.router.route(
                RouteRequest(
                    request_id=req.request_id,
                    tenant=req.tenant,
                    prompt_len=len(req.prompt_token_ids),
                    block_hashes=hashes,
                    allowed_clusters=self.settings.residency.get(req.tenant),
                )
            )
        except NoRouteError as e:
            raise NoWorker(str(e)) from e

    async def submit(self, req: GenerationRequest) -> GenerationHandle:
        await self.capacity.acquire()  # a slot at some decode worker, or 429/503
        try:
            return await self._submit(req)
        except BaseException:
            self.capacity.release()
            raise

    async def _submit(self, req: GenerationRequest) -> GenerationHandle:
        # A worker that started draining (role switch) since its last heartbeat answers 409:
        # stop routing to it and route again.
        for _ in range(MAX_ROUTE_ATTEMPTS):
            decision = self.route(req)
            prefill = self.fleet.workers[decision.prefill_instance]
            decode = self.fleet.workers[decision.decode_instance]
            response = await self._open_decode(req, decode.info.name, decode.info.http_url)
            if response is not None:
                break
            decode.draining = True
        else:
            raise NoWorker("every decode worker is switching roles")
        spec = to_spec(req.params)
        salt = req.tenant_salt.hex()
        prefill_cmd = PrefillCommand(
            request_id=req.request_id,
            prompt_token_ids=req.prompt_token_ids,
            params=spec,
            tenant_salt_hex=salt,
            deadline_s=self.settings.kv_deadline_s,
            target=self.kv_target(prefill.info.cluster, decode.info),
        )
        self._spawn(
            self._prefill(
                prefill.info.http_url, decode.info.http_url, prefill_cmd, decision, req.tenant
            )
        )
        decode.inflight += 1
        route = (
            f"{decision.path} prefill={decision.prefill_instance} decode={decision.decode_instance}"
        )
        if decision.pull_instance is not None:
            route += f" pull={decision.pull_instance}"  # its cached prefix is copied first
        return GenerationHandle(
            route=route,
            cached_tokens=decision.cached_tokens,
            events=self._events(response, decode.info.name),
        )

    def kv_target(self, source_cluster: str, receiver: WorkerInfo) -> KvTarget:
        """Where KV from ``source_cluster`` reaches ``receiver``'s KV receiver: over that
        cluster's link (through its emulator or WAN address when one is set), TLS identity
        the receiver's cluster."""
        link = self.settings.links.get(source_cluster, LinkRoute("local"))
        host, port = link.via.get(receiver.name, (receiver.kv_host, receiver.kv_port))
        return KvTarget(
            host=host,
            port=port,
            link=link.name,
            codec=link.codec,
            connections=link.connections,
            tls=link.tls,
            server_name=receiver.cluster,
        )

    async def _open_decode(
        self, req: GenerationRequest, name: str, url: str
    ) -> aiohttp.ClientResponse | None:
        """Open the token stream at a decode worker (it reserves blocks and waits for KV);
        None if the worker is draining."""
        cmd = DecodeCommand(
            request_id=req.request_id,
            prompt_token_ids=req.prompt_token_ids,
            params=to_spec(req.params),
            tenant_salt_hex=req.tenant_salt.hex(),
            expect_kv=True,
            deadline_s=self.settings.kv_deadline_s,
        )
        try:
            response = await self.workers.open_stream(url + "/decode", cmd.encode())
        except WorkerCallError as e:
            raise NoWorker(f"decode worker {name} unreachable: {e}") from e
        if response.status == 409:
            response.release()
            return None
        if response.status != 200:
            response.release()
            raise NoWorker(f"decode worker {name} answered {response.status}")
        return response

    def _events(
        self, response: aiohttp.ClientResponse, decode_name: str
    ) -> AsyncIterator[TokenDelta]:
        finished = False

        async def finish() -> None:
            """Once, however the stream ends (even never started): close the decode stream
            and give back the request's slot."""
            nonlocal finished
            if finished:
                return
            finished = True
            response.release()  # back to the pool if read to its end, else closed
            record = self.fleet.workers.get(decode_name)
            if record is not None:
                record.inflight = max(0, record.inflight - 1)
            self.capacity.release()

        return ClosingEvents(self._deltas(response, decode_name, finish), finish)

    async def _deltas(
        self,
        response: aiohttp.ClientResponse,
        decode_name: str,
        finish: Callable[[], Awaitable[None]],
    ) -> AsyncGenerator[TokenDelta, None]:
        try:
            buffer, finished = b"", False
            chunks = response.content.iter_any()
            while True:
                chunk = await anext(chunks, None)
                if chunk is None:  # the body ended: a last line may lack its newline
                    lines, buffer = [buffer], b""
                else:
                    buffer += chunk
                    if len(buffer) > MAX_EVENT_BYTES:
                        raise ValueError(f"decode worker {decode_name} sent an oversized event")
                    *lines, buffer = buffer.split(b"\n")
                merged: TokenDelta | None = None
                for line in lines:
                    if not line or finished:
                        # After the last event the worker ends the body; reading to its end
                        # (not closing early) keeps the connection alive for the next request.
                        continue
                    event = TokenEvent.decode(line)
                    if event.error is not None:
                        raise ValueError(event.error)
                    finished = event.finished
                    merged = _merge(merged, event)
                if merged is not None:
                    yield merged
                if chunk is None:
                    break
            if not finished:
                raise ConnectionError(f"decode worker {decode_name} closed the stream early")
        finally:
            await finish()

    async def _prefill(
        self, url: str, decode_url: str, cmd: PrefillCommand, decision: RouteDecision, tenant: str
    ) -> None:
        if decision.pull_instance is not None:
            await pull_prefix(self, cmd, decision, tenant)
        started_s = time.monotonic()
        try:
            status, body = await self.workers.post(url + "/prefill", cmd.encode(), cmd.deadline_s)
            result = (
                PrefillResult.decode(body)
                if status == 200
                else PrefillResult(request_id=cmd.request_id, ok=False, error=f"HTTP {status}")
            )
        except WorkerCallError as e:
            result = PrefillResult(request_id=cmd.request_id, ok=False, error=str(e))
        if not result.ok:
            logger.warning(
                "prefill of %s failed (%s); the decode side falls back",
                cmd.request_id,
                result.error,
            )
            # Tell the decode worker now rather than letting it wait out the KV deadline.
            failed = KvFailed(request_id=cmd.request_id, reason=(result.error or "")[:1024])
            with contextlib.suppress(WorkerCallError):
                await self.workers.post(decode_url + "/kv_failed", failed.encode(), 10.0)
        if self.on_prefill is not None:
            self.on_prefill(decision, result)
        self.audit_transfer(
            cmd,
            decision.prefill_instance,
            decision.decode_instance,
            result,
            tenant,
            time.monotonic() - started_s,
        )

    def audit_transfer(
        self,
        cmd: PrefillCommand,
        source: str,
        destination: str,
        result: PrefillResult,
        tenant: str,
        elapsed_s: float,
    ) -> None:
        """One audit line per cross-cluster transfer (never the prompt: ids and sizes only):
        the prefill's KV to its decode instance, or a cache pull between prefill instances."""
        clusters = []
        for name in (source, destination):
            record = self.fleet.workers.get(name)
            clusters.append(record.info.cluster if record is not None else "?")
        if self.audit is None or clusters[0] == clusters[1]:
            return
        self.audit.transfer(
            AuditRecord(
                request_id=cmd.request_id,
                tenant=tenant,
                kv_bytes=result.kv_bytes,
                wire_bytes=result.wire_bytes,
                link=cmd.target.link,
                source_cluster=clusters[0],
                source_instance=source,
                destination_cluster=clusters[1],
                destination_instance=destination,
                outcome="ok" if result.ok else "failed",
                reason=result.error,
                seconds=result.transfer_s if result.ok else elapsed_s,
            )
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _merge(delta: TokenDelta | None, event: TokenEvent) -> TokenDelta:
    if delta is None:
        return TokenDelta(
            event.request_id, event.token_ids, event.text, event.finished, event.finish_reason
        )
    return TokenDelta(
        delta.request_id,
        delta.new_token_ids + event.token_ids,
        delta.new_text + event.text,
        event.finished,
        event.finish_reason,
    )
