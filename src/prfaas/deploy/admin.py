"""Operator controls of a `prfaas serve` deployment (cluster token): drive a link emulator
and restart a spawned worker. For fault drills, tests and the stress benchmark.

  POST /internal/link/{name}              LinkControl (rate, blackhole, stall, cut) on each emulator
                                          of link ``name`` (e.g. ``remote->local``)
  POST /internal/workers/{name}/restart   SIGKILL worker ``name`` if it runs, start it again
                                          (it registers with a new epoch and its new ports)
"""

from __future__ import annotations

import asyncio
import hmac

from fastapi import FastAPI, HTTPException, Request
from pydantic import ValidationError

from prfaas.deploy.launcher import Launcher
from prfaas.messages import TOKEN_HEADER, LinkControl
from prfaas.transfer.emulator import LinkEmulator


def add_admin_routes(
    app: FastAPI,
    emulators: dict[str, list[LinkEmulator]],
    launcher: Launcher,
    cluster_token: str,
) -> None:
    def check(request: Request) -> None:
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), cluster_token):
            raise HTTPException(401, "missing or invalid cluster token")

    @app.post("/internal/link/{name}", include_in_schema=False)
    async def link(name: str, request: Request) -> dict[str, int]:
        check(request)
        try:
            control = LinkControl.decode(await request.body())
        except ValidationError as e:
            raise HTTPException(400, str(e)) from e
        targets = emulators.get(name)
        if not targets:
            raise HTTPException(404, f"no emulated link {name!r}; have {sorted(emulators)}")
        for emu in targets:
            if control.uncapped:
                emu.set_rate_gbps(None)
            elif control.rate_gbps is not None:
                emu.set_rate_gbps(control.rate_gbps)
            if control.blackhole is not None:
                emu.blackhole(control.blackhole)
            if control.stall_s > 0:
                emu.stall(control.stall_s)
            if control.cut:
                emu.cut()
        return {"emulators": len(targets)}

    @app.post("/internal/workers/{name}/restart", include_in_schema=False)
    async def restart(name: str, request: Request) -> dict[str, int]:
        check(request)
        if name not in launcher.specs:
            raise HTTPException(404, f"worker {name!r} was not spawned by this gateway")
        proc = await asyncio.to_thread(launcher.restart, name)
        return {"pid": proc.pid}
