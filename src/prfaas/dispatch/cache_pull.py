"""Cross-cluster cache pull, the gateway's side (abundant mode, paper section 3.4.3).

Before a prefill, when the router found a longer prefix of the prompt cached in another
cluster, the instance holding it ships that prefix's KV to the chosen prefill worker, which
lands it as prefix cache (``worker/pull.py``). The receiving side is told first, then the
holder prefills the prefix (a cache hit but for its last token) and sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prfaas.dispatch.config import BackendSettings
from prfaas.dispatch.worker_client import WorkerCallError, WorkerClient
from prfaas.gateway.fleet import WorkerFleet
from prfaas.messages import PrefillCommand, PullCommand, PullResult, SamplingSpec
from prfaas.router.types import RouteDecision
from prfaas.transfer.audit import AuditLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachePull:
    fleet: WorkerFleet
    workers: WorkerClient
    settings: BackendSettings
    audit: AuditLog | None = None
    on_pull: Callable[[RouteDecision, PullResult], None] | None = None

    async def run(self, cmd: PrefillCommand, decision: RouteDecision, tenant: str) -> None:
        """Abundant mode: copy the longer cached prefix from the instance holding it (in
        ``pull_from``) to the chosen prefill instance before its prefill, over the link out
        of the holder's cluster. The holder recomputes at most the prefix's last token; the
        puller lands it as prefix cache. On any failure the prefill just computes more."""
        holder = self.fleet.workers.get(decision.pull_instance or "")
        puller = self.fleet.workers.get(decision.prefill_instance)
        if holder is None or puller is None or puller.info.hybrid:
            # A hybrid model's hit also needs a state snapshot at the prefix's end, which an
            # imported prefix does not carry yet: a pull there would buy nothing.
            return
        prefix = cmd.prompt_token_ids[: decision.cached_tokens]
        pull_id = f"{cmd.request_id}-pull"
        deadline = self.settings.kv_deadline_s / 3  # leave the decode side time to fall back
        send = PrefillCommand(
            request_id=pull_id,
            prompt_token_ids=prefix,
            params=SamplingSpec(max_tokens=1, temperature=0.0),
            tenant_salt_hex=cmd.tenant_salt_hex,
            deadline_s=deadline,
            target=self.settings.kv_target(holder.info.cluster, puller.info),
        )
        land = PullCommand(
            request_id=pull_id,
            prompt_token_ids=prefix,
            tenant_salt_hex=cmd.tenant_salt_hex,
            deadline_s=deadline,
        )
        landing = asyncio.ensure_future(
            self.workers.post(puller.info.http_url + "/pull", land.encode(), deadline + 5)
        )
        result = PullResult(request_id=pull_id, ok=False)
        started_s = time.monotonic()
        try:
            shipped = await self.workers.prefill(holder.info.http_url, send, deadline + 5)
            if self.audit is not None:
                elapsed_s = time.monotonic() - started_s
                self.audit.shipped(send, shipped, holder.info, puller.info, tenant, elapsed_s)
            if not shipped.ok:
                result = PullResult(request_id=pull_id, ok=False, error="holder did not send")
            else:
                status, body = await landing
                if status == 200:
                    result = PullResult.decode(body)
        except (WorkerCallError, ValueError) as e:
            result = PullResult(request_id=pull_id, ok=False, error=str(e)[:1024])
        finally:
            if not landing.done():
                landing.cancel()  # the puller's own deadline ends its wait
                with contextlib.suppress(asyncio.CancelledError, WorkerCallError):
                    await landing
        if not result.ok:
            logger.info("cache pull for %s failed: %s", cmd.request_id, result.error)
        if self.on_pull is not None:
            self.on_pull(decision, result)
