"""The cluster backend: route each request, start the decode stream, ship the prefill.

For every request: derive its salted block hashes, ask the router (PrfaaS rule, cache
affinity, residency), open the token stream at the chosen decode worker (which reserves
blocks and waits for KV, and says first whether it holds them), and, only if it does, tell
the chosen prefill worker to compute the prompt and ship its KV to that decode worker over
the link between their clusters. Without a reservation the decode worker prefills the prompt
itself and no KV crosses the link. If the KV never comes, the decode worker prefills locally;
the stream still completes. A decode stream lost mid-way resumes at another decode instance
(``failover.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, Literal

from prfaas.dispatch.cache_pull import CachePull
from prfaas.dispatch.config import BackendSettings
from prfaas.dispatch.decode_stream import Batches, open_decode, reservation
from prfaas.dispatch.failover import DecodeFailover
from prfaas.dispatch.worker_client import WorkerCallError, WorkerClient
from prfaas.gateway.admission import ClosingEvents
from prfaas.gateway.backend import GenerationHandle, GenerationRequest, NoWorker
from prfaas.gateway.fleet import WorkerFleet
from prfaas.kvcache.hashing import block_hashes, root_hash
from prfaas.messages import (
    DecodeCommand,
    KvFailed,
    PrefillCommand,
    PrefillResult,
    PullResult,
    TokenEvent,
    WorkerInfo,
)
from prfaas.router.router import Router
from prfaas.router.types import NoRouteError, Path, RouteDecision, RouteRequest
from prfaas.transfer.audit import AuditLog, RequestRecord

logger = logging.getLogger(__name__)
MAX_ROUTE_ATTEMPTS = 3
# The prefill call answers right after its KV is acknowledged; the stream's last event waits
# at most this long for it (usage's cached_tokens comes from it).
PREFILL_RESULT_WAIT_S = 2.0


class ClusterBackend:
    def __init__(
        self,
        settings: BackendSettings,
        fleet: WorkerFleet,
        router: Router,
        tokenizer: Any,
        max_model_len: int,
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
        self.on_prefill = on_prefill
        self.audit = audit
        self.workers = WorkerClient(settings.cluster_token, settings.worker_tls, fleet.cluster_at)
        self.cache_pull = CachePull(fleet, self.workers, settings, audit, on_pull)
        self.failover = DecodeFailover(
            fleet,
            self.workers,
            settings,
            lambda req: self.route_request(req, []),
            router.regions,
            on_resume=self._resumed,
        )
        self._tasks: set[asyncio.Task[None]] = set()

    def num_decode(self) -> int:
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

    def route(self, req: GenerationRequest, hashes: list[bytes]) -> RouteDecision:
        self.router.prefill_finished(req.request_id)  # routed again: the last one never ran
        try:
            return self.router.route(self.route_request(req, hashes))
        except NoRouteError as e:
            self._audit(req, "refused", [], reason=str(e))
            raise NoWorker(str(e)) from e

    def route_request(self, req: GenerationRequest, hashes: list[bytes]) -> RouteRequest:
        """``req`` as the router sees it: its tenant's residency and regions."""
        return RouteRequest(
            request_id=req.request_id,
            tenant=req.tenant,
            prompt_len=len(req.prompt_token_ids),
            block_hashes=hashes,
            allowed_clusters=self.settings.residency.get(req.tenant),
            regions=self.settings.tenant_regions.get(req.tenant),
        )

    def _audit(
        self,
        req: GenerationRequest,
        outcome: Literal["routed", "resumed", "refused"],
        instances: list[str],
        reason: str | None = None,
    ) -> None:
        """One ``request`` line in the audit log: the clusters of ``instances`` (prefill,
        cache pull holder, decode; the decode instance last) and the decode's region."""
        if self.audit is None:
            return
        workers = self.fleet.workers
        clusters = [workers[n].info.cluster for n in instances if n in workers]
        region = home = None
        regions = self.router.regions
        if regions is not None:
            preference = regions.preference(self.route_request(req, []))
            home = preference[0] if preference else None
            region = regions.region_of.get(clusters[-1]) if clusters else None
        record = RequestRecord(
            req.request_id,
            req.tenant,
            outcome,
            region,
            home,
            tuple(dict.fromkeys(clusters)),
            tuple(dict.fromkeys(instances)),
            reason,
        )
        self.audit.request(record)

    def _resumed(self, req: GenerationRequest, decode_instance: str) -> None:
        self._audit(req, "resumed", [decode_instance])

    def block_hashes(self, req: GenerationRequest) -> list[bytes]:
        """The prompt's salted block hashes, derived once per request (the router and the
        kv index read them; workers derive the same ones from the same function)."""
        fingerprint, block_size = self.fleet.fingerprint, self.fleet.block_size
        if fingerprint is None or block_size is None:
            raise NoWorker("no worker has registered yet")
        root = root_hash(fingerprint, req.tenant_salt)
        return block_hashes(req.prompt_token_ids, block_size, root)

    async def submit(self, req: GenerationRequest) -> GenerationHandle:
        """Route, open the decode stream, start the prefill; admission happened before.
        The router counts the prefill in flight from routing to ``_prefill``'s end."""
        try:
            return await self._submit(req)
        except BaseException:
            self.router.prefill_finished(req.request_id)  # routed, never dispatched
            raise

    async def _submit(self, req: GenerationRequest) -> GenerationHandle:
        hashes = self.block_hashes(req)
        # A worker that started draining (role switch) since its last heartbeat answers 409:
        # stop routing to it and route again.
        for _ in range(MAX_ROUTE_ATTEMPTS):
            decision = self.route(req, hashes)
            prefill = self.fleet.workers[decision.prefill_instance]
            decode = self.fleet.workers[decision.decode_instance]
            opened = await self._open_decode(req, decode.info.name, decode.info.http_url)
            if opened is not None:
                break
            decode.draining = True
        else:
            raise NoWorker("every decode worker is switching roles")
        touched = [decision.prefill_instance, decision.decode_instance]
        if decision.pull_instance is not None:
            touched.insert(0, decision.pull_instance)
        self._audit(req, "routed", touched)
        return self._start(req, decision, prefill.info, decode.info, opened)

    async def submit_on(
        self, req: GenerationRequest, prefill_name: str, decode_name: str
    ) -> GenerationHandle:
        """Run ``req`` on one path, past the router and without failover (the canary's
        probe): ``prefill_name`` ships its KV to ``decode_name``; when they are one instance
        it prefills itself."""
        prefill, decode = self.fleet.workers.get(prefill_name), self.fleet.workers.get(decode_name)
        if prefill is None or decode is None:
            raise NoWorker(f"no worker {prefill_name if prefill is None else decode_name}")
        local = prefill_name == decode_name
        opened = await self._open_decode(req, decode_name, decode.info.http_url, not local)
        if opened is None:
            raise NoWorker(f"decode worker {decode_name} is switching roles")
        path: Path = "pd-p" if prefill.info.cluster == decode.info.cluster else "prfaas"
        n = len(req.prompt_token_ids)
        decision = RouteDecision(
            req.request_id, path, prefill.info.cluster, prefill_name, decode_name, 0, n
        )
        return self._start(
            req, decision, prefill.info, decode.info, opened, failover=False, local=local
        )

    def _start(
        self,
        req: GenerationRequest,
        decision: RouteDecision,
        prefill: WorkerInfo,
        decode: WorkerInfo,
        opened: tuple[bool, list[TokenEvent], Batches],
        failover: bool = True,
        local: bool = False,
    ) -> GenerationHandle:
        """The decode stream is open at ``decode``: start the prefill that feeds it, if the
        decode worker holds blocks for its KV (``local``: it prefills the prompt itself)."""
        reserved, first, stream = opened
        cmd = PrefillCommand(
            request_id=req.request_id,
            prompt_token_ids=req.prompt_token_ids,
            params=req.params,
            tenant_salt_hex=req.tenant_salt.hex(),
            deadline_s=self.settings.kv_deadline_s,
            target=self.settings.kv_target(prefill.cluster, decode),
        )
        route = (
            f"{decision.path} prefill={decision.prefill_instance} decode={decision.decode_instance}"
        )
        if decision.pull_instance is not None:
            route += f" pull={decision.pull_instance}"  # its cached prefix is copied first

        # cached_tokens: the engine's real prefix hit, from whichever instance prefilled
        # (``_prefill`` and ``_deltas`` report it); never the router's prediction.
        # The stream's last event waits (bounded) for the prefill call to end, so that usage
        # never reports a hit before the prefill instance has said what it was.
        def engine_hit(cached_tokens: int) -> None:
            handle.cached_tokens = cached_tokens

        ended = asyncio.Event()
        events = self._events(req, decode.name, first, stream, engine_hit, ended, failover)
        handle = GenerationHandle(route, 0, events, decode.name)
        if local:  # no prefill call, nothing shipped
            ended.set()
            return handle
        if not reserved:  # the decode worker prefills it: the KV would cross for nothing
            logger.info("%s: %s holds no blocks; no remote prefill", req.request_id, route)
            self.router.prefill_finished(req.request_id)
            ended.set()
            return handle
        self._spawn(self._prefill(prefill, decode, cmd, decision, req.tenant, engine_hit, ended))
        return handle

    async def _open_decode(
        self, req: GenerationRequest, name: str, url: str, expect_kv: bool = True
    ) -> tuple[bool, list[TokenEvent], Batches] | None:
        """Open the token stream at a decode worker (with ``expect_kv`` it reserves blocks
        and waits for KV): whether it holds blocks, the events read with that answer, and the
        stream; None if the worker is draining."""
        cmd = DecodeCommand(
            request_id=req.request_id,
            prompt_token_ids=req.prompt_token_ids,
            params=req.params,
            tenant_salt_hex=req.tenant_salt.hex(),
            expect_kv=expect_kv,
            deadline_s=self.settings.kv_deadline_s,
        )
        stall_s, healthy = self.settings.stream_stall_s, self.failover.healthy(name)
        try:
            batches = await open_decode(self.workers, name, url, cmd, stall_s, healthy)
        except WorkerCallError as e:
            raise NoWorker(f"decode worker {name} unreachable: {e}") from e
        if isinstance(batches, int):
            if batches == 409:
                return None
            raise NoWorker(f"decode worker {name} answered {batches}")
        if not expect_kv:
            return False, [], batches
        try:
            reserved, rest = await reservation(batches, name)
        except BaseException as e:
            await batches.aclose()
            if isinstance(e, ConnectionError | ValueError):
                raise NoWorker(f"decode worker {name}: {e}") from e
            raise
        return reserved, rest, batches

    def _events(
        self,
        req: GenerationRequest,
        name: str,
        first: list[TokenEvent],
        stream: Batches,
        engine_hit: Callable[[int], None],
        prefill_ended: asyncio.Event,
        failover: bool = True,
    ) -> AsyncGenerator[TokenEvent, None]:
        """The request's events (``first``, then ``stream``'s, resumed elsewhere if the
        stream is lost and ``failover``). However they end, even never iterated, the response
        is released: closed before its first step, a generator skips its finally, so the
        started ``stream`` is closed directly (idempotent)."""
        batches = _chain(first, stream)
        if failover:
            batches = self.failover.resumable(req, name, batches)
        return ClosingEvents(self._deltas(batches, engine_hit, prefill_ended), stream.aclose)

    async def _deltas(
        self, batches: Batches, engine_hit: Callable[[int], None], prefill_ended: asyncio.Event
    ) -> AsyncGenerator[TokenEvent, None]:
        """One merged event per chunk read; the last waits (bounded) for the prefill's end."""
        async for batch in batches:
            merged: TokenEvent | None = None
            for event in batch:
                if event.cached_tokens:  # the decode instance prefilled the prompt itself
                    engine_hit(event.cached_tokens)
                merged = _merge(merged, event)
            if merged is not None:
                if merged.finished and not prefill_ended.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(prefill_ended.wait(), PREFILL_RESULT_WAIT_S)
                yield merged

    async def _prefill(
        self,
        prefill: WorkerInfo,
        decode: WorkerInfo,
        cmd: PrefillCommand,
        decision: RouteDecision,
        tenant: str,
        engine_hit: Callable[[int], None],
        ended: asyncio.Event,
    ) -> None:
        """Run the prefill at ``prefill``, shipping to ``decode``; ``ended`` is set however
        it ends (the decode stream's last event waits for it)."""
        try:
            if decision.pull_instance is not None:
                await self.cache_pull.run(cmd, decision, tenant)
            started_s = time.monotonic()
            try:
                result = await self.workers.prefill(prefill.http_url, cmd, cmd.deadline_s)
            except WorkerCallError as e:
                result = PrefillResult(request_id=cmd.request_id, ok=False, error=str(e))
            if result.ok:
                engine_hit(result.cached_tokens)  # the prefill instance's real prefix hit
            else:
                logger.warning(
                    "prefill of %s failed (%s); the decode side falls back",
                    cmd.request_id,
                    result.error,
                )
                # Tell the decode worker now rather than letting it wait out the KV deadline.
                failed = KvFailed(request_id=cmd.request_id, reason=(result.error or "")[:1024])
                with contextlib.suppress(WorkerCallError):
                    await self.workers.post(decode.http_url + "/kv_failed", failed.encode(), 10.0)
            if self.on_prefill is not None:
                self.on_prefill(decision, result)
            if self.audit is not None:
                elapsed_s = time.monotonic() - started_s
                self.audit.shipped(cmd, result, prefill, decode, tenant, elapsed_s)
        finally:
            self.router.prefill_finished(cmd.request_id)
            ended.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _chain(first: list[TokenEvent], batches: Batches) -> Batches:
    """``first`` (if any events), then ``batches``; closing it closes ``batches``."""
    try:
        if first:
            yield first
        async for batch in batches:
            yield batch
    finally:
        await batches.aclose()


def _merge(merged: TokenEvent | None, event: TokenEvent) -> TokenEvent:
    if merged is None:
        return event
    # Both were validated on receipt: no validation again on this per-token path.
    return TokenEvent.model_construct(
        request_id=merged.request_id,
        token_ids=merged.token_ids + event.token_ids,
        text=merged.text + event.text,
        finished=event.finished,
        finish_reason=event.finish_reason,
        computed_tokens=merged.computed_tokens + event.computed_tokens,  # first event's
        logprobs=None
        if merged.logprobs is None and event.logprobs is None
        else (merged.logprobs or []) + (event.logprobs or []),
        prompt_logprobs=merged.prompt_logprobs or event.prompt_logprobs,
    )
