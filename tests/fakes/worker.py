"""A fake worker: speaks the real worker control plane (``WorkerInfo``, ``Heartbeat``,
``POST /prefill``, ``/decode``, ``/kv_failed``, ``/health``) with the real typed messages, and
computes nothing.

Why a fake and not the real worker: it tests the gateway's dispatch logic (routing calls,
the decode stream, retries on a draining worker, ``kv_failed``, admission and 429, failover,
registration refusals, which instance's prefix hit the API reports), not engines. A real
worker would load a model per instance and bury those paths under seconds of compute; the
engine and transfer paths have their own tests. Each behaviour is a plain attribute a test
sets, and every command the gateway sends is recorded for the test to check.

``benchmarks/instant_worker.py`` runs it as a process that registers and heartbeats on its
own (the gateway benchmark); tests drive registration and heartbeats explicitly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from prfaas.messages import (
    TOKEN_HEADER,
    DecodeCommand,
    Heartbeat,
    KvFailed,
    LinkReport,
    LogprobEntry,
    PrefillCommand,
    PrefillResult,
    Role,
    TokenEvent,
    WorkerInfo,
)

FINGERPRINT = "0" * 64


@dataclass
class Behaviour:
    """What the fake answers; tests change it between requests."""

    tokens: int = 4  # token events per decode stream (at most max_tokens)
    decode_status: int = 200  # 409: draining (the gateway routes again); 500: broken
    decode_cached_tokens: int = 0  # on the first event: this instance prefilled itself
    end_early: bool = False  # the stream ends without a finished event
    prefill_ok: bool = True  # False: PrefillResult(ok=False), the decode side falls back
    prefill_status: int = 200
    prefill_cached_tokens: int = 0  # the prefill engine's prefix hit
    prefill_kv_bytes: int = 0  # KV the prefill says it delivered (the fake sends none)
    prefill_delay_s: float = 0.0
    decode_delay_s: float = 0.0  # before the first event (a real one waits for the KV)
    hold_decode: asyncio.Event | None = None  # each decode stream waits for it
    stall_after: int | None = None  # events sent before the stream goes silent, never ending
    heartbeats: bool = True  # False: ``FakeCluster.beat`` skips it (a wedged process)
    ignores_kv: bool = False  # reports computing a prompt whose KV it was sent (the canary's)
    reserve: bool = True  # False: no blocks for the KV (the stream says so first)
    text_padding: int = 0  # characters appended to each token's text (a large stream)
    token_gap_s: float = 0.0  # between token events (a decode step)
    hold_reservation: asyncio.Event | None = None  # the reservation answer waits for it
    cached_blocks: int = 0  # what ``/internal/free_cache`` says it dropped (then 0)


@dataclass
class Received:
    prefills: list[PrefillCommand] = field(default_factory=list)
    decodes: list[DecodeCommand] = field(default_factory=list)
    kv_failed: list[KvFailed] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)  # streams the gateway closed unfinished
    cache_frees: int = 0  # calls of /internal/free_cache


class FakeWorker:
    def __init__(
        self,
        name: str,
        role: Role,
        cluster: str,
        *,
        block_size: int = 16,
        fingerprint: str = FINGERPRINT,
        max_model_len: int = 8192,
    ) -> None:
        self.name, self.role, self.cluster = name, role, cluster
        self.block_size, self.fingerprint, self.max_model_len = (
            block_size,
            fingerprint,
            max_model_len,
        )
        self.epoch = time.time_ns()
        self.behaviour = Behaviour()
        self.received = Received()
        self.http_url = ""  # set once served (``info`` needs it)
        self.app = self._create_app()

    def info(self) -> WorkerInfo:
        assert self.http_url, "serve the app first and set http_url"
        return WorkerInfo(
            name=self.name,
            cluster=self.cluster,
            role=self.role,
            http_url=self.http_url,
            kv_host="127.0.0.1",
            kv_port=1,  # never dialled: the fake prefill sends no KV
            fingerprint=self.fingerprint,
            model_name="fake",
            max_model_len=self.max_model_len,
            block_size=self.block_size,
            epoch=self.epoch,
        )

    def heartbeat(self, links: list[LinkReport] | None = None, draining: bool = False) -> Heartbeat:
        return Heartbeat(
            name=self.name,
            epoch=self.epoch,
            role=self.role,
            num_waiting=0,
            num_running=0,
            kv_usage=0.0,
            fallbacks=0,
            draining=draining,
            links=links or [],
        )

    def register(self, gateway_url: str, token: str) -> httpx.Response:
        """Register with a gateway and send one heartbeat; the gateway's answer to the
        registration (200, or a refusal)."""
        headers = {TOKEN_HEADER: token}
        r = httpx.post(
            f"{gateway_url}/internal/register",
            content=self.info().encode(),
            headers=headers,
            timeout=5.0,
        )
        if r.status_code == 200:
            self.send_heartbeat(gateway_url, token)
        return r

    def send_heartbeat(
        self, gateway_url: str, token: str, links: list[LinkReport] | None = None
    ) -> None:
        r = httpx.post(
            f"{gateway_url}/internal/heartbeat",
            content=self.heartbeat(links).encode(),
            headers={TOKEN_HEADER: token},
            timeout=5.0,
        )
        r.raise_for_status()

    def _create_app(self) -> FastAPI:
        app = FastAPI()
        got = self.received

        @app.post("/prefill")
        async def prefill(request: Request) -> Response:
            cmd = PrefillCommand.decode(await request.body())
            got.prefills.append(cmd)
            if self.behaviour.prefill_delay_s:
                await asyncio.sleep(self.behaviour.prefill_delay_s)
            if self.behaviour.prefill_status != 200:
                return Response(status_code=self.behaviour.prefill_status)
            ok = self.behaviour.prefill_ok
            result = PrefillResult(
                request_id=cmd.request_id,
                ok=ok,
                cached_tokens=self.behaviour.prefill_cached_tokens if ok else 0,
                kv_bytes=self.behaviour.prefill_kv_bytes if ok else 0,
                error=None if ok else "fake: the transfer failed",
            )
            return Response(result.encode(), media_type="application/json")

        @app.post("/decode")
        async def decode(request: Request) -> Response:
            cmd = DecodeCommand.decode(await request.body())
            got.decodes.append(cmd)
            behaviour = self.behaviour
            if behaviour.decode_status != 200:
                return Response(status_code=behaviour.decode_status)
            n = min(behaviour.tokens, cmd.params.max_tokens)
            # An honest decode side computes the prompt only when no KV is shipped to it.
            recomputes = not cmd.expect_kv or behaviour.ignores_kv
            computed = len(cmd.prompt_token_ids) if recomputes else 0
            # Token i of the answer is 3 + i, whichever instance sends it: a resumed stream
            # (decode failover) goes on from the tokens it was given.
            start = len(cmd.resume_token_ids)

            async def lines() -> AsyncIterator[bytes]:
                if cmd.expect_kv:
                    if behaviour.hold_reservation is not None:
                        await behaviour.hold_reservation.wait()
                    yield TokenEvent(request_id=cmd.request_id, reserved=behaviour.reserve).encode()
                    yield b"\n"
                if behaviour.hold_decode is not None:
                    await behaviour.hold_decode.wait()
                await asyncio.sleep(behaviour.decode_delay_s)
                try:
                    for i in range(start, n):
                        if i == behaviour.stall_after:
                            await asyncio.Event().wait()  # until the gateway hangs up
                        if behaviour.end_early and i == n - 1:
                            return
                        yield event(i, i == n - 1)
                        await asyncio.sleep(behaviour.token_gap_s)
                except (asyncio.CancelledError, GeneratorExit):
                    got.abandoned.append(cmd.request_id)
                    raise

            def logprob(i: int) -> LogprobEntry:  # made up, deterministic
                return LogprobEntry(token_id=3 + i, logprob=-0.25 * (i + 1), rank=1)

            def event(i: int, last: bool) -> bytes:
                return (
                    TokenEvent(
                        request_id=cmd.request_id,
                        token_ids=[3 + i],
                        text=f" w{3 + i}" + " " * behaviour.text_padding,
                        finished=last,
                        finish_reason="length" if last else None,
                        cached_tokens=behaviour.decode_cached_tokens if i == start else 0,
                        computed_tokens=computed if i == start else 0,
                        logprobs=None if cmd.params.logprobs is None else [logprob(i)],
                    ).encode()
                    + b"\n"
                )

            return StreamingResponse(lines(), media_type="application/x-ndjson")

        @app.post("/kv_failed")
        async def kv_failed(request: Request) -> Response:
            got.kv_failed.append(KvFailed.decode(await request.body()))
            return JSONResponse({"fallback": True})

        @app.post("/internal/free_cache")
        async def free_cache() -> dict[str, int]:
            got.cache_frees += 1
            freed, self.behaviour.cached_blocks = self.behaviour.cached_blocks, 0
            return {"freed_blocks": freed}

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        return app
