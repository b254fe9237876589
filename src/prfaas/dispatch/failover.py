"""Decode failover: a decode stream whose worker stalls, dies or hangs up mid-stream goes on
at another healthy decode instance of the tenant's clusters (its best region first, then
the least loaded; never outside its residency), which prefills the prompt and
the tokens already streamed (``DecodeCommand.resume_token_ids``) and continues from there.
The client's stream never learns of it; a greedy request streams exactly the tokens of an
uninterrupted run. With no instance to go to, the original error ends the stream. Each move
is reported to ``on_moved`` (the gateway's admission, which counts the request against the
instance it now runs on).

Not failed over: an error event (the worker refused the request: another would too) and
an oversized event.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import aiohttp

from prfaas.dispatch.config import BackendSettings
from prfaas.dispatch.decode_stream import Batches, open_decode
from prfaas.dispatch.worker_client import WorkerCallError, WorkerClient
from prfaas.gateway.backend import GenerationRequest
from prfaas.gateway.fleet import WorkerFleet
from prfaas.messages import DecodeCommand
from prfaas.router.regions import RegionMap
from prfaas.router.types import RouteRequest

logger = logging.getLogger(__name__)
MAX_FAILOVERS = 2  # per request


class DecodeFailover:
    def __init__(
        self,
        fleet: WorkerFleet,
        workers: WorkerClient,
        settings: BackendSettings,
        route_request: Callable[[GenerationRequest], RouteRequest],
        regions: RegionMap | None = None,
        on_resume: Callable[[GenerationRequest, str], None] | None = None,
    ) -> None:
        self.fleet = fleet
        self.workers = workers
        self.settings = settings
        self.route_request = route_request  # the request's residency and regions
        self.regions = regions
        self.on_resume = on_resume  # (request, the decode instance it resumed at): the audit
        # (request id, the decode instance it resumed at); set by whoever counts requests
        self.on_moved: Callable[[str, str], None] | None = None

    def healthy(self, name: str) -> Callable[[], bool]:
        return functools.partial(self.fleet.healthy, name)

    async def resumable(self, req: GenerationRequest, name: str, batches: Batches) -> Batches:
        """``batches`` of the stream at ``name``; on a failure, the same request's next
        events from another instance (at most ``MAX_FAILOVERS`` times)."""
        streamed: list[int] = []
        tried, finished = {name}, False
        try:
            for failovers in range(MAX_FAILOVERS + 1):
                try:
                    async for batch in batches:
                        for event in batch:
                            streamed += event.token_ids
                            finished = event.finished
                        yield batch
                    return
                except (ConnectionError, aiohttp.ClientError) as exc:  # stalls included
                    await batches.aclose()
                    if finished:  # lost after its last event: nothing is missing
                        return
                    resumed = None
                    if failovers < MAX_FAILOVERS:
                        resumed = await self._resume(req, streamed, tried)
                    if resumed is None:
                        raise
                    logger.warning(
                        "request %s: %s; resumed at %s after %d tokens",
                        req.request_id,
                        exc,
                        resumed[0],
                        len(streamed),
                    )
                    if self.on_moved is not None:
                        self.on_moved(req.request_id, resumed[0])
                    batches = resumed[1]
                    if self.on_resume is not None:
                        self.on_resume(req, resumed[0])
        finally:
            await batches.aclose()

    async def _resume(
        self, req: GenerationRequest, streamed: list[int], tried: set[str]
    ) -> tuple[str, Batches] | None:
        """Open the request's stream at a healthy decode instance not tried: in the tenant's
        best region, the least loaded."""
        route = self.route_request(req)
        cmd = DecodeCommand(
            request_id=req.request_id,
            prompt_token_ids=req.prompt_token_ids,
            # Prompt logprobs came with the first token, already streamed.
            params=req.params.model_copy(update={"prompt_logprobs": None}),
            tenant_salt_hex=req.tenant_salt.hex(),
            expect_kv=False,
            deadline_s=self.settings.kv_deadline_s,
            resume_token_ids=streamed,
        )
        while True:
            candidates = [
                v
                for v in self.fleet.instances()
                if v.role == "decode"
                and v.healthy
                and v.name not in tried
                and route.allows(v.cluster)
            ]
            if not candidates:
                return None
            name = min(candidates, key=lambda v: (self._rank(route, v.cluster), v.load)).name
            tried.add(name)
            url = self.fleet.workers[name].info.http_url
            stall_s = self.settings.stream_stall_s
            try:
                opened = await open_decode(
                    self.workers, name, url, cmd, stall_s, self.healthy(name)
                )
            except WorkerCallError as e:
                logger.warning("request %s: cannot resume at %s: %s", req.request_id, name, e)
                continue
            if not isinstance(opened, int):
                return name, opened

    def _rank(self, route: RouteRequest, cluster: str) -> int:
        return 0 if self.regions is None else self.regions.rank(route, cluster)
