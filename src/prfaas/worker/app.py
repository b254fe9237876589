"""A worker's HTTP control endpoint. Every route requires the cluster token in
``x-prfaas-cluster-token`` and, when the worker has certificates (HTTPS, mutual TLS), a
gateway's client certificate; the engine behind them is the worker's ``InstanceEngine``.

  POST /prefill    PrefillCommand -> PrefillResult    (role prefill)
  POST /decode     DecodeCommand  -> NDJSON TokenEvent lines (role decode)
  POST /kv_failed  KvFailed: the KV a decode waits for will not come (role decode)
  POST /pull       PullCommand    -> PullResult      (any role: land a pulled cached prefix)
  POST /role       RoleSwitch: drain, then switch (PD-cluster workers)
  POST /profile    ProfileRequest -> ProfileResult   (start-up profiling: short measured runs)
  GET  /internal/check  WorkerCheck: pool integrity, blocks, requests, KV connections, tasks
  GET  /health     200 once the engine is loaded and started; 503 before, and while stopping
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from prfaas.config import faults_allowed
from prfaas.control_plane import GATEWAY, peer_of
from prfaas.messages import (
    TOKEN_HEADER,
    DecodeCommand,
    FaultSwitch,
    KvFailed,
    PrefillCommand,
    ProfileRequest,
    PullCommand,
    Role,
    RoleSwitch,
    TokenEvent,
)
from prfaas.worker.process import DrainTimeout, Worker, exit_with_parent


def create_worker_app(worker: Worker) -> FastAPI:
    engine = worker.engine
    started = asyncio.Event()  # set while the engine runs: what /health reports

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        started.set()
        tasks = [asyncio.create_task(worker.gateway_loop(u)) for u in worker.config.gateway_urls]
        if worker.config.parent_pid is not None:
            tasks.append(asyncio.create_task(exit_with_parent(worker.config.parent_pid)))
        try:
            yield
        finally:
            started.clear()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await engine.stop()

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(ValidationError)
    async def invalid(request: Request, exc: ValidationError) -> Response:
        return Response(f"invalid message: {exc.error_count()} errors", status_code=400)

    def check(request: Request, role: Role | None = None) -> None:
        token = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(token, worker.config.cluster_token):
            raise HTTPException(401, "missing or invalid cluster token")
        if worker.control is not None and peer_of(request) != GATEWAY:
            # Another cluster's worker holds a valid certificate too, but only gateways command.
            raise HTTPException(403, f"certificate {peer_of(request)!r} is not a gateway's")
        # A draining worker still takes commands of its current role: they were routed
        # before the gateway stopped routing here, and the drain waits for them.
        if role is not None and worker.role != role:
            raise HTTPException(409, f"this worker is {worker.role}, not {role}")

    @app.post("/prefill")
    async def prefill(request: Request) -> Response:
        check(request, "prefill")
        cmd = PrefillCommand.decode(await request.body())
        result = await engine.prefill(cmd)
        return Response(result.encode(), media_type="application/json")

    @app.post("/decode")
    async def decode(request: Request) -> StreamingResponse:
        check(request, "decode")
        cmd = DecodeCommand.decode(await request.body())

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for event in engine.decode(cmd):
                    yield event.encode() + b"\n"
            except ValueError as e:  # input the engine refuses: a clear error event
                yield (
                    TokenEvent(
                        request_id=cmd.request_id,
                        finished=True,
                        finish_reason="error",
                        error=str(e),
                    ).encode()
                    + b"\n"
                )

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post("/kv_failed")
    async def kv_failed(request: Request) -> dict[str, bool]:
        check(request, "decode")
        msg = KvFailed.decode(await request.body())
        return {"fallback": engine.kv_failed(msg.request_id, msg.reason)}

    if faults_allowed():

        @app.post("/internal/fault")
        async def fault(request: Request) -> dict[str, bool]:
            check(request)
            msg = FaultSwitch.decode(await request.body())
            engine.set_fault(msg.fault, msg.on)
            return {msg.fault: msg.on}

    @app.post("/pull")
    async def pull(request: Request) -> Response:
        check(request)  # any role: the receiver of a cross-cluster cache pull
        cmd = PullCommand.decode(await request.body())
        result = await engine.pull(cmd)
        return Response(result.encode(), media_type="application/json")

    @app.post("/role")
    async def role(request: Request) -> Response:
        check(request)
        switch = RoleSwitch.decode(await request.body())
        try:
            await worker.switch_role(switch.role)
        except DrainTimeout as e:  # still serving its role; the caller hears why
            raise HTTPException(409, str(e)) from e
        return Response(worker.info().encode(), media_type="application/json")

    @app.post("/profile")
    async def profile(request: Request) -> Response:
        check(request)
        msg = ProfileRequest.decode(await request.body())
        try:
            result = await engine.profile(msg)
        except ValueError as e:
            raise HTTPException(400, str(e)) from e
        return Response(result.encode(), media_type="application/json")

    @app.post("/internal/free_cache")
    async def free_cache(request: Request) -> dict[str, int]:
        """Drop the prefix cache (its model version was drained; nothing will reuse it)."""
        check(request)
        return {"freed_blocks": await worker.engine.free_cache()}

    @app.get("/internal/check")
    async def internal_check(request: Request) -> Response:
        check(request)
        return Response((await worker.check()).encode(), media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        if not started.is_set():
            body = {"status": "unavailable", "reason": "the engine is not running"}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok", "role": worker.role})

    return app
