"""Blue-green rollouts of a `prfaas serve` deployment (cluster token), and the drain of a
version whose weight reached 0.

  GET  /admin/rollout   every served version: weight, requests held, drained, instances
  POST /admin/rollout   {"model": NAME, "version": V, "weight": P}: V gets P percent of
                        NAME's new sessions, the other version the rest (`prfaas rollout`)

A drained version (weight 0, nothing held at the gateway: ``catalog``) frees its caches:
once each of its instances reports no request in its heartbeat and the gateway has none in
flight there, each drops its prefix cache (``/internal/free_cache``; the evictions reach the
kv index with the next heartbeat). Rounds repeat until one frees nothing, so that a request
whose blocks were released just after a round leaves nothing cached.

``/metrics``: per version its weight, the requests it holds, and whether it is drained.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from prometheus_client import Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prfaas.dispatch.cluster import ClusterBackend
from prfaas.dispatch.worker_client import WorkerCallError
from prfaas.gateway.catalog import ModelCatalog, ServedVersion, UnknownModel
from prfaas.gateway.metrics import GatewayMetrics
from prfaas.messages import TOKEN_HEADER

logger = logging.getLogger(__name__)
IDLE_WAIT_S = 60.0  # longest wait for a drained version's instances to report idle
ROUND_GAP_S = 1.0  # two heartbeats (worker.process.HEARTBEAT_S): the next round sees the last
MAX_ROUNDS = 5


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    weight: float = Field(ge=0, le=100)


@dataclass
class Drains:
    """The drains of a deployment's versions: the cache frees each one ran."""

    backends: dict[str, ClusterBackend]  # version key -> its backend (fleet, worker client)
    freed_blocks: dict[str, int] = field(default_factory=dict)  # version key -> total
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def start(self, version: ServedVersion) -> None:
        """``ModelCatalog.on_drained``: free the version's caches in the background."""
        task = asyncio.ensure_future(self.free_caches(version.key))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def free_caches(self, key: str) -> None:
        backend = self.backends[key]
        fleet = backend.fleet
        loop = asyncio.get_running_loop()
        end_s = loop.time() + IDLE_WAIT_S
        total = 0
        for round_ in range(MAX_ROUNDS):
            while loop.time() < end_s and any(
                r.num_waiting + r.num_running > 0 or fleet.inflight.get(n, 0) > 0
                for n, r in fleet.workers.items()
            ):
                await asyncio.sleep(0.1)
            freed = 0
            for name, record in list(fleet.workers.items()):
                url = record.info.http_url + "/internal/free_cache"
                try:
                    status, body = await backend.workers.post(url, b"", 10.0)
                    if status == 200:
                        freed += int(json.loads(body)["freed_blocks"])
                    else:
                        logger.warning("%s: %s answered %d to free_cache", key, name, status)
                except (WorkerCallError, ValueError, KeyError, TypeError) as e:
                    logger.warning("%s: cannot free the caches of %s: %s", key, name, e)
            total += freed
            self.freed_blocks[key] = total
            if round_ > 0 and freed == 0:
                break
            await asyncio.sleep(ROUND_GAP_S)
        logger.info("%s drained: %d cached blocks freed on its instances", key, total)


def rollout_status(catalog: ModelCatalog, drains: Drains) -> dict[str, Any]:
    versions = []
    for key, v in catalog.versions.items():
        backend = drains.backends.get(key)
        fleet = backend.fleet if backend is not None else None
        versions.append(
            {
                "model": v.name,
                "version": v.version,
                "weight": catalog.weight(v),
                "held": v.held,
                "drained": catalog.drained(v),
                "freed_blocks": drains.freed_blocks.get(key, 0),
                "instances": []
                if fleet is None
                else [
                    {
                        "name": n,
                        "cluster": r.info.cluster,
                        "role": r.info.role,
                        "healthy": fleet.healthy(n),
                        "waiting": r.num_waiting,
                        "running": r.num_running,
                        "inflight": fleet.inflight.get(n, 0),
                        "fingerprint": r.info.fingerprint,
                        "kv_index_blocks": fleet.kv_index.num_blocks_of(n),
                    }
                    for n, r in sorted(fleet.workers.items())
                ],
            }
        )
    return {"versions": versions}


def add_rollout_routes(
    app: FastAPI, catalog: ModelCatalog, drains: Drains, cluster_token: str
) -> None:
    def check(request: Request) -> None:
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), cluster_token):
            raise HTTPException(401, "missing or invalid cluster token")

    @app.get("/admin/rollout", include_in_schema=False)
    async def status(request: Request) -> dict[str, Any]:
        check(request)
        return rollout_status(catalog, drains)

    @app.post("/admin/rollout", include_in_schema=False)
    async def rollout(request: Request) -> dict[str, Any]:
        check(request)
        try:
            req = RolloutRequest.model_validate_json(await request.body())
            weights = catalog.set_weight(req.model, req.version, req.weight)
        except UnknownModel as e:
            raise HTTPException(404, f"no served model {e}") from None
        except (ValidationError, ValueError) as e:
            raise HTTPException(400, str(e)[:500]) from None
        logger.info("rollout: %s weights now %s", req.model, weights)
        return {"model": req.model, "weights": weights}


def add_rollout_metrics(metrics: GatewayMetrics, catalog: ModelCatalog) -> None:
    r, labels = metrics.registry, ["model", "version"]
    weight = Gauge(
        "prfaas_model_version_weight",
        "Percent of the model name's new sessions this version gets",
        labels,
        registry=r,
    )
    held = Gauge(
        "prfaas_model_version_held", "Requests this version serves now", labels, registry=r
    )
    drained = Gauge(
        "prfaas_model_version_drained",
        "1 once the version is at weight 0 and holds no request",
        labels,
        registry=r,
    )
    for v in catalog.versions.values():
        weight.labels(v.name, v.version).set_function(functools.partial(catalog.weight, v))
        held.labels(v.name, v.version).set_function(functools.partial(_held, v))
        drained.labels(v.name, v.version).set_function(functools.partial(catalog.drained, v))


def _held(version: ServedVersion) -> int:
    return version.held
