"""The gateway's internal endpoints: worker registration and heartbeats (cluster token).

With ``bound_to_certificates`` they are served on the gateway's mutual-TLS control listener
and a worker's certificate decides where it may be: a registration into any cluster but the
one its certificate names is refused (403, logged), and so is a heartbeat for a worker of
another cluster. The token alone never places a worker anywhere.

With several fleets (one per served model version, each with its own clusters), a worker
registers into the fleet of its cluster, and its heartbeats go where it registered."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from pydantic import ValidationError

from prfaas.control_plane import peer_of
from prfaas.gateway.fleet import BlockSizeConflictError, WorkerFleet
from prfaas.messages import TOKEN_HEADER, Heartbeat, WorkerInfo
from prfaas.router.kv_index import KvIndexUnavailableError

logger = logging.getLogger(__name__)


def add_internal_routes(
    app: FastAPI,
    fleets: WorkerFleet | Sequence[WorkerFleet],
    cluster_token: str,
    bound_to_certificates: bool = False,
) -> None:
    every = [fleets] if isinstance(fleets, WorkerFleet) else list(fleets)
    by_cluster = {c.name: f for f in every for c in f.clusters()}

    def holding(worker: str) -> WorkerFleet | None:
        return next((f for f in every if worker in f.workers), None)

    def check(request: Request) -> None:
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), cluster_token):
            raise HTTPException(401, "missing or invalid cluster token")

    def check_cluster(request: Request, worker: str, cluster: str) -> None:
        """The client's certificate names ``cluster`` (where ``worker`` claims to be)."""
        if not bound_to_certificates:
            return
        peer = peer_of(request)
        if peer != cluster:
            logger.warning(
                "refused worker %s into cluster %r: its certificate names %r",
                worker,
                cluster,
                peer,
            )
            raise HTTPException(
                403, f"worker {worker}: certificate of {peer!r} cannot register into {cluster!r}"
            )

    @app.post("/internal/register", include_in_schema=False)
    async def register(request: Request) -> Response:
        check(request)
        try:
            info = WorkerInfo.decode(await request.body())
            check_cluster(request, info.name, info.cluster)
            if bound_to_certificates and not info.http_url.startswith("https://"):
                raise ValueError(f"worker {info.name}: control URL {info.http_url} is not https")
            fleet = by_cluster.get(info.cluster)
            if fleet is None:
                raise ValueError(f"worker {info.name}: unknown cluster {info.cluster!r}")
            before = holding(info.name)
            if before is not None:
                held = before.workers[info.name]
                if held.info.cluster != info.cluster and before.healthy(info.name):
                    raise HTTPException(
                        409, f"worker name {info.name} is live in {held.info.cluster}"
                    )
                if before is not fleet:  # it moved to another model version's cluster
                    before.forget(info.name)
            fleet.register(info)
        except BlockSizeConflictError as e:
            raise HTTPException(409, str(e)) from e
        except (ValidationError, ValueError) as e:
            raise HTTPException(400, str(e)) from e
        return Response(b"{}", media_type="application/json")

    @app.post("/internal/heartbeat", include_in_schema=False)
    async def heartbeat(request: Request) -> Response:
        check(request)
        try:
            hb = Heartbeat.decode(await request.body())
        except ValidationError as e:
            raise HTTPException(400, str(e)) from e
        fleet = holding(hb.name)
        if fleet is None:
            raise HTTPException(404, "unknown worker or epoch: register again")
        check_cluster(request, hb.name, fleet.workers[hb.name].info.cluster)
        try:
            known = fleet.heartbeat(hb)
        except KvIndexUnavailableError as e:  # liveness taken; the worker resends the batch
            raise HTTPException(503, str(e)) from e
        if not known:
            raise HTTPException(404, "unknown worker or epoch: register again")
        return Response(b"{}", media_type="application/json")
