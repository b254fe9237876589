"""Operator routes of a deployment's gateway (cluster token), and the role switch the control
loop uses too:

  POST /internal/role   RoleSwitch {name, role}: drain a PD-cluster worker, then switch it
  GET  /status          clusters, instances and roles, queue depths, threshold and mode,
                        the control loop's state, and each region's state
"""

from __future__ import annotations

import hmac
import ssl
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from pydantic import ValidationError

from prfaas.deploy.canary import canary_status
from prfaas.deploy.region_status import region_status
from prfaas.gateway.fleet import WorkerFleet
from prfaas.messages import TOKEN_HEADER, Role, RoleSwitch, WorkerInfo


class RoleSwitchError(RuntimeError):
    """A role switch was refused (unknown worker, not in the PD cluster) or failed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def switch_role(
    fleet: WorkerFleet,
    cluster_token: str,
    name: str,
    role: Role,
    tls: ssl.SSLContext | None = None,
) -> WorkerInfo:
    """Drain a PD-cluster worker, then switch its role (the ``/internal/role`` route and the
    control loop's long tick both come here).

    The gateway stops routing to it at once; the worker finishes what it holds, switches,
    and is registered again under its new role and a new epoch."""
    record = fleet.workers.get(name)
    if record is None:
        raise RoleSwitchError(404, f"unknown worker {name!r}")
    kind = next((c.kind for c in fleet.clusters() if c.name == record.info.cluster), None)
    if kind != "pd":
        raise RoleSwitchError(400, "only PD-cluster workers switch roles")
    record.draining = True
    try:
        async with httpx.AsyncClient(
            headers={TOKEN_HEADER: cluster_token}, verify=tls or True
        ) as client:
            r = await client.post(
                record.info.http_url + "/role",
                content=RoleSwitch(role=role).encode(),
                timeout=600.0,
                extensions={} if tls is None else {"sni_hostname": record.info.cluster},
            )
    except httpx.HTTPError as e:
        record.draining = False
        raise RoleSwitchError(502, f"worker {name} unreachable: {e}") from e
    if r.status_code != 200:  # 409: the drain gave up (the worker says why) and it kept its role
        record.draining = False
        status = 409 if r.status_code == 409 else 502
        raise RoleSwitchError(status, f"worker answered {r.status_code}: {r.text[:500]}")
    info = WorkerInfo.decode(r.content)
    fleet.register(info)
    return info


def add_role_route(
    app: FastAPI, fleet: WorkerFleet, cluster_token: str, tls: ssl.SSLContext | None = None
) -> None:
    """POST /internal/role {name, role}: drain a PD-cluster worker, then switch its role."""

    @app.post("/internal/role", include_in_schema=False)
    async def switch(request: Request) -> Response:
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), cluster_token):
            raise HTTPException(401, "missing or invalid cluster token")
        try:
            msg = RoleSwitch.decode(await request.body())
        except ValidationError as e:
            raise HTTPException(400, str(e)) from e
        try:
            info = await switch_role(fleet, cluster_token, msg.name, msg.role, tls)
        except RoleSwitchError as e:
            raise HTTPException(e.status, str(e)) from e
        return Response(info.encode(), media_type="application/json")


def add_status_route(
    app: FastAPI,
    fleet: WorkerFleet,
    router: Any,
    control: Any = None,
    canary: Any = None,
    *,
    admin_token: str | None = None,
) -> None:
    """GET /status: clusters, instances and roles, queue depths, threshold and mode; with a
    ``control`` loop, where t came from (profiled / pinned / default) and what it measured.
    With ``admin_token`` (a gateway on a non-loopback address) only for a caller holding it
    in the cluster-token header: the view names every worker's address."""

    @app.get("/status")
    async def status(request: Request) -> dict[str, Any]:
        if admin_token is not None and not hmac.compare_digest(
            request.headers.get(TOKEN_HEADER, ""), admin_token
        ):
            raise HTTPException(401, "missing or invalid cluster token (the admin key)")
        return {
            "threshold_tokens": router.state.threshold_tokens,
            "mode": router.state.mode,
            **(control.status() if control is not None else {}),
            "policy": router.policy.name,
            "kv_index_blocks": len(fleet.kv_index),
            **({"canary": canary_status(canary)} if canary is not None else {}),
            **(
                {"regions": region_status(router.regions, fleet)}
                if getattr(router, "regions", None) is not None
                else {}
            ),
            "instances": [
                {
                    "name": n,
                    "cluster": r.info.cluster,
                    "role": r.info.role,
                    "healthy": fleet.healthy(n),
                    "waiting": r.num_waiting,
                    "queued_tokens": r.queued_tokens,
                    "running": r.num_running,
                    "inflight": fleet.inflight.get(n, 0),
                    "fallbacks": r.fallbacks,
                    "http_url": r.info.http_url,
                    "kv_port": r.info.kv_port,
                    "epoch": r.info.epoch,
                    "kv_index_blocks": fleet.kv_index.num_blocks_of(n),
                }
                for n, r in sorted(fleet.workers.items())
            ],
        }
