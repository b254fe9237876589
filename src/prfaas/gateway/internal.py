"""The gateway's internal endpoints: worker registration and heartbeats (cluster token)."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from pydantic import ValidationError

from prfaas.gateway.fleet import BlockSizeConflictError, WorkerFleet
from prfaas.messages import TOKEN_HEADER, Heartbeat, WorkerInfo
from prfaas.router.kv_index import KvIndexUnavailableError


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
        try:
            known = fleet.heartbeat(hb)
        except KvIndexUnavailableError as e:  # liveness taken; the worker resends the batch
            raise HTTPException(503, str(e)) from e
        if not known:
            raise HTTPException(404, "unknown worker or epoch: register again")
        return Response(b"{}", media_type="application/json")
