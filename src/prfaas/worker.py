"""One worker process: an engine with a role (prefill or decode), its HTTP control endpoint,
its KV receiver, and its registration and heartbeat to the gateway.

Endpoints (all require the cluster token in ``x-prfaas-cluster-token``):
  POST /prefill  PrefillCommand -> PrefillResult    (role prefill)
  POST /decode   DecodeCommand  -> NDJSON TokenEvent lines (role decode)
  POST /pull     PullCommand    -> PullResult      (any role: land a pulled cached prefix)
  POST /role     RoleSwitch: drain, then switch (PD-cluster workers)
  POST /profile  ProfileRequest -> ProfileResult   (start-up profiling: short measured runs)
  GET  /internal/check  WorkerCheck: pool integrity, blocks, requests, KV connections, tasks
  GET  /health
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import ssl
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from prfaas.cache_event_log import CacheEventLog, EventBatch
from prfaas.config import EngineConfig
from prfaas.decode.pull import PullRole
from prfaas.decode.role import DecodeRole
from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.engine import Engine
from prfaas.engine.profiling import profile_engine
from prfaas.messages import (
    TOKEN_HEADER,
    BlockCounts,
    CacheEventMsg,
    DecodeCommand,
    Heartbeat,
    KvFailed,
    PrefillCommand,
    ProfileRequest,
    PullCommand,
    Role,
    RoleSwitch,
    TokenEvent,
    WorkerCheck,
    WorkerInfo,
)
from prfaas.prefill.role import LinkSettings, PrefillRole
from prfaas.transfer.auth import kv_auth_key
from prfaas.transfer.config import ReceiverConfig
from prfaas.transfer.receiver import KvReceiver
from prfaas.transfer.tls import PLAINTEXT, Plaintext, TlsConfig, client_context, server_context

logger = logging.getLogger(__name__)
HEARTBEAT_S = 0.5


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    cluster: str
    role: Role
    host: str
    port: int
    gateway_urls: tuple[str, ...]  # every gateway it registers and heartbeats with
    cluster_token: str
    engine: EngineConfig
    kv_host: str = "127.0.0.1"
    kv_port: int = 0
    certs_dir: Path | None = None
    link_rate_gbps: dict[str, float] = field(default_factory=dict)
    parent_pid: int | None = None  # exit when this process (the launcher) is gone


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.role: Role = config.role
        self.draining = False
        self.epoch = time.time_ns() + os.getpid()  # unique per start: stale entries vanish
        self.events = CacheEventLog(config.gateway_urls)
        engine = Engine(config.engine)
        self.fingerprint = engine.fingerprint
        # Fixed at load, read by /profile from the loop (the engine itself lives on its thread).
        self.vocab_size, self.layer_specs = engine.vocab_size, engine.layer_specs
        self.engine = AsyncEngine(engine)
        tls_server: ssl.SSLContext | Plaintext = PLAINTEXT
        tls_client: ssl.SSLContext | None = None
        if config.certs_dir is not None:
            tls = TlsConfig.from_dir(config.certs_dir, config.cluster)
            tls_server, tls_client = server_context(tls), client_context(tls)
        self.receiver = KvReceiver(
            ReceiverConfig(
                host=config.kv_host,
                port=config.kv_port,
                fingerprint=bytes.fromhex(engine.fingerprint),
                auth_key=kv_auth_key(config.cluster_token),  # only peers holding the token
            ),
            tls=tls_server,
        )
        self.prefill = PrefillRole(
            self.engine,
            LinkSettings(config.link_rate_gbps),
            tls_client,
            auth_key=kv_auth_key(config.cluster_token),
        )
        self.decode = DecodeRole(self.engine, self.receiver, engine.layout)
        self.pull = PullRole(self.engine, self.receiver, engine.layout)
        host, port = self.receiver.address
        self._info = WorkerInfo(
            name=config.name,
            cluster=config.cluster,
            role=config.role,
            http_url=f"http://{config.host}:{config.port}",
            kv_host=host,
            kv_port=port,
            fingerprint=engine.fingerprint,
            model_name=str(engine.loaded.folder),
            max_model_len=engine.max_model_len,
            block_size=engine.kv.block_size,
            epoch=self.epoch,
            hybrid=engine.hybrid,
        )

    def info(self) -> WorkerInfo:
        return self._info.model_copy(update={"role": self.role, "epoch": self.epoch})

    def collect_events(self) -> None:
        """Move the engine's new cache events into the log as the next numbered batch."""
        events = [
            CacheEventMsg(block_hash=e.block_hash.hex(), stored=e.stored, snapshot=e.snapshot)
            for e in self.engine.drain_cache_events()
        ]
        self.events.add(self.epoch, events)

    def heartbeat(self, batch: EventBatch | None = None) -> Heartbeat:
        stats = self.engine.stats()
        return Heartbeat(
            name=self.config.name,
            epoch=self.epoch,
            role=self.role,
            num_waiting=stats.num_waiting,
            num_running=stats.num_running,
            kv_usage=min(1.0, stats.kv_usage),
            fallbacks=stats.fallbacks,
            draining=self.draining,
            events=batch.events if batch else [],
            seq=batch.seq if batch else 0,
            queued_tokens=stats.num_queued_tokens,
        )

    async def gateway_loop(self, url: str) -> None:
        """Register, then heartbeat; re-register whenever the gateway forgets us. One loop
        per gateway, so that a dead gateway never delays the others."""
        headers = {TOKEN_HEADER: self.config.cluster_token}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=5.0) as client:
            registered = False
            while True:
                self.collect_events()
                try:
                    if not registered:
                        r = await client.post("/internal/register", content=self.info().encode())
                        registered = r.status_code == 200
                    if registered:
                        registered = await self._send_heartbeats(client, url)
                except httpx.HTTPError as e:
                    logger.debug("gateway %s unreachable: %s", url, e)
                    registered = False
                await asyncio.sleep(HEARTBEAT_S)

    async def _send_heartbeats(self, client: httpx.AsyncClient, url: str) -> bool:
        """One heartbeat per event batch this gateway lacks, in order (one without events if
        none); False if the gateway wants us to register again."""
        epoch = self.epoch
        batches: list[EventBatch | None] = [*self.events.pending(url, epoch)] or [None]
        for batch in batches:
            if self.epoch != epoch:  # switched roles meanwhile: the log starts over
                return True
            r = await client.post("/internal/heartbeat", content=self.heartbeat(batch).encode())
            if r.status_code == 503:  # its kv index is unreachable: send the batch later
                return True
            if r.status_code != 200:
                return False
            if batch is not None:
                self.events.ack(url, epoch, batch.seq)
        return True

    async def check(self) -> WorkerCheck:
        """Integrity and leak report; the engine parts are read on the engine thread."""

        def engine_side(engine: Engine) -> tuple[str | None, BlockCounts, tuple[int, int, int]]:
            try:
                engine.check_integrity()
                error = None
            except AssertionError as e:
                error = str(e) or type(e).__name__
            pool, sched = engine.kv.pool, engine.scheduler
            free = [b for b in range(pool.num_blocks) if pool.ref_counts[b] == 0]
            blocks = BlockCounts(
                total=pool.num_blocks,
                free=len(free),
                cached=sum(1 for b in free if pool.hashes[b] is not None),
                leased=pool.num_blocks - len(free),
            )
            return error, blocks, (len(sched.waiting), len(sched.running), len(sched.parked))

        error, blocks, (waiting, running, parked) = await self.engine.call(engine_side)
        return WorkerCheck(
            name=self.config.name,
            pid=os.getpid(),
            epoch=self.epoch,
            role=self.role,
            integrity_error=error,
            blocks=blocks,
            num_waiting=waiting,
            num_running=running,
            num_parked=parked,
            num_streams=self.engine.num_streams,
            kv_connections=self.receiver.num_connections,
            kv_landings=self.receiver.num_transfers,
            kv_allocated_bytes=self.receiver.allocated_bytes,
            kv_awaited=self.decode.num_awaiting_kv,
            kv_sending=self.prefill.num_sending,
            asyncio_tasks=len(asyncio.all_tasks()),
            threads=threading.active_count(),
        )

    async def switch_role(self, role: Role) -> None:
        """Drain (the gateway stops routing here once it sees the flag), then switch."""
        self.draining = True
        try:
            while True:
                s = self.engine.stats()
                if s.num_waiting + s.num_running + s.num_parked == 0:
                    break
                await asyncio.sleep(0.05)
            self.role = role
            self.epoch += 1  # a new identity in the index: the gateway re-reads our role
        finally:
            self.draining = False


async def _exit_with_parent(parent_pid: int) -> None:
    """A worker spawned by `prfaas serve` must not outlive it, however it ended (even
    SIGKILL): once reparented, shut down gracefully (SIGTERM to ourselves)."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(1.0)
    logger.warning("launcher %d is gone; shutting down", parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)


def create_worker_app(worker: Worker) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.receiver.start()
        worker.engine.start()
        tasks = [asyncio.create_task(worker.gateway_loop(u)) for u in worker.config.gateway_urls]
        if worker.config.parent_pid is not None:
            tasks.append(asyncio.create_task(_exit_with_parent(worker.config.parent_pid)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await worker.engine.shutdown()
            worker.receiver.close()
            worker.decode.close()

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(ValidationError)
    async def invalid(request: Request, exc: ValidationError) -> Response:
        return Response(f"invalid message: {exc.error_count()} errors", status_code=400)

    def check(request: Request, role: Role | None = None) -> None:
        token = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(token, worker.config.cluster_token):
            raise HTTPException(401, "missing or invalid cluster token")
        # A draining worker still takes commands of its current role: they were routed
        # before the gateway stopped routing here, and the drain waits for them.
        if role is not None and worker.role != role:
            raise HTTPException(409, f"this worker is {worker.role}, not {role}")

    @app.post("/prefill")
    async def prefill(request: Request) -> Response:
        check(request, "prefill")
        cmd = PrefillCommand.decode(await request.body())
        result = await worker.prefill.run(cmd)
        return Response(result.encode(), media_type="application/json")

    @app.post("/decode")
    async def decode(request: Request) -> StreamingResponse:
        check(request, "decode")
        cmd = DecodeCommand.decode(await request.body())

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for event in worker.decode.run(cmd):
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
        return {"fallback": worker.decode.fail(msg.request_id, msg.reason)}

    @app.post("/pull")
    async def pull(request: Request) -> Response:
        check(request)  # any role: the receiver of a cross-cluster cache pull
        cmd = PullCommand.decode(await request.body())
        result = await worker.pull.run(cmd)
        return Response(result.encode(), media_type="application/json")

    @app.post("/role")
    async def role(request: Request) -> Response:
        check(request)
        switch = RoleSwitch.decode(await request.body())
        await worker.switch_role(switch.role)
        return Response(worker.info().encode(), media_type="application/json")

    @app.post("/profile")
    async def profile(request: Request) -> Response:
        check(request)
        msg = ProfileRequest.decode(await request.body())
        try:
            result = await profile_engine(
                worker.engine,
                msg,
                vocab_size=worker.vocab_size,
                layer_specs=worker.layer_specs,
                block_size=worker.info().block_size,
            )
        except ValueError as e:
            raise HTTPException(400, str(e)) from e
        return Response(result.encode(), media_type="application/json")

    @app.get("/internal/check")
    async def internal_check(request: Request) -> Response:
        check(request)
        return Response((await worker.check()).encode(), media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "role": worker.role}

    return app
