"""The gateway's internal endpoints: worker registration and heartbeats (cluster token)."""

from __future__ import annotations

import hmac
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from pydantic import ValidationError

from prfaas.gateway.fleet import WorkerFleet
from prfaas.messages import TOKEN_HEADER, Heartbeat, RoleSwitch, WorkerInfo


def add_internal_routes(app: FastAPI, fleet: WorkerFleet, cluster_token: str) -> None:
    def check(request: Request) -> None:
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), cluster_token):
            raise HTTPException(401, "missing or invalid cluster token")

    @app.post("/internal/register", include_in_schema=False)
    async def register(request: Request) -> Response:
        check(request)
        try:
            info = WorkerInfo.decode(await request.body())
            fleet.register(info)
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
        if not fleet.heartbeat(hb):
            raise HTTPException(404, "unknown worker or epoch: register again")
        return Response(b"{}", media_type="application/json")


def add_role_route(app: FastAPI, fleet: WorkerFleet, cluster_token: str) -> None:
    """POST /internal/role {name, role}: drain a PD-cluster worker, then switch its role.

    The gateway stops routing to it at once; the worker finishes what it holds, switches,
    and is registered again under its new role and a new epoch."""

    @app.post("/internal/role", include_in_schema=False)
    async def switch(request: Request) -> Response:
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), cluster_token):
            raise HTTPException(401, "missing or invalid cluster token")
        try:
            msg = RoleSwitch.decode(await request.body())
        except ValidationError as e:
            raise HTTPException(400, str(e)) from e
        record = fleet.workers.get(msg.name)
        if record is None:
            raise HTTPException(404, f"unknown worker {msg.name!r}")
        if fleet.cluster_kind(record.info.cluster) != "pd":
            raise HTTPException(400, "only PD-cluster workers switch roles")
        record.draining = True
        async with httpx.AsyncClient(headers={TOKEN_HEADER: cluster_token}) as client:
            r = await client.post(
                record.info.http_url + "/role",
                content=RoleSwitch(role=msg.role).encode(),
                timeout=600.0,
            )
        if r.status_code != 200:
            record.draining = False
            raise HTTPException(502, f"worker answered {r.status_code}")
        fleet.register(WorkerInfo.decode(r.content))
        return Response(r.content, media_type="application/json")


def add_status_route(app: FastAPI, fleet: WorkerFleet, router: Any) -> None:
    """GET /status: clusters, instances and roles, queue depths, threshold and mode."""

    @app.get("/status")
    async def status() -> dict[str, Any]:
        return {
            "threshold_tokens": router.state.threshold_tokens,
            "mode": router.state.mode,
            "policy": router.policy.name,
            "kv_index_blocks": len(fleet.kv_index),
            "instances": [
                {
                    "name": n,
                    "cluster": r.info.cluster,
                    "role": r.info.role,
                    "healthy": fleet.healthy(n),
                    "waiting": r.num_waiting,
                    "running": r.num_running,
                    "inflight": r.inflight,
                    "fallbacks": r.fallbacks,
                    "http_url": r.info.http_url,
                    "epoch": r.info.epoch,
                    "kv_index_blocks": fleet.kv_index.num_blocks_of(n),
                }
                for n, r in sorted(fleet.workers.items())
            ],
        }
