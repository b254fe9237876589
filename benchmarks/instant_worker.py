"""An instant worker for gateway benchmarks: speaks the worker control plane (register,
heartbeat, /prefill, /decode, /kv_failed) but computes nothing.

Why a stand-in and not the real worker: the gateway's own cost (parsing, tokenizing, routing,
hashing, the hop, SSE) is what `benchmarks/gateway.py` measures, and a real engine's
milliseconds per token would bury it. Every message is the real typed message, so the
gateway runs its real code path.

    python benchmarks/instant_worker.py --name pd-d-0 --role decode --cluster local \
        --port 9001 --gateway http://127.0.0.1:8000 --tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from prfaas.messages import (
    TOKEN_HEADER,
    DecodeCommand,
    Heartbeat,
    PrefillCommand,
    PrefillResult,
    TokenEvent,
    WorkerInfo,
)

FINGERPRINT = "0" * 64


def create_app(args: argparse.Namespace) -> FastAPI:
    token = os.environ["PRFAAS_CLUSTER_TOKEN"]
    epoch = time.time_ns()
    info = WorkerInfo(
        name=args.name,
        cluster=args.cluster,
        role=args.role,
        http_url=f"http://127.0.0.1:{args.port}",
        kv_host="127.0.0.1",
        kv_port=args.port,  # never dialled: the instant prefill sends no KV
        fingerprint=FINGERPRINT,
        model_name="instant",
        max_model_len=args.max_model_len,
        block_size=16,
        epoch=epoch,
    )

    async def gateway_loop() -> None:
        async with httpx.AsyncClient(
            base_url=args.gateway, headers={TOKEN_HEADER: token}, timeout=5.0
        ) as client:
            registered = False
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if not registered:
                        r = await client.post("/internal/register", content=info.encode())
                        registered = r.status_code == 200
                    if registered:
                        hb = Heartbeat(
                            name=args.name,
                            epoch=epoch,
                            role=args.role,
                            num_waiting=0,
                            num_running=0,
                            kv_usage=0.0,
                            fallbacks=0,
                        )
                        r = await client.post("/internal/heartbeat", content=hb.encode())
                        registered = r.status_code == 200
                await asyncio.sleep(0.5)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(gateway_loop())
        yield
        task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.post("/prefill")
    async def prefill(request: Request) -> Response:
        cmd = PrefillCommand.decode(await request.body())
        result = PrefillResult(request_id=cmd.request_id, ok=True)
        return Response(result.encode(), media_type="application/json")

    @app.post("/decode")
    async def decode(request: Request) -> StreamingResponse:
        cmd = DecodeCommand.decode(await request.body())
        n = min(args.tokens, cmd.params.max_tokens)

        async def lines() -> AsyncIterator[bytes]:
            for i in range(n):
                last = i == n - 1
                yield (
                    TokenEvent(
                        request_id=cmd.request_id,
                        token_ids=[42],
                        text=" x",
                        finished=last,
                        finish_reason="length" if last else None,
                    ).encode()
                    + b"\n"
                )

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post("/kv_failed")
    async def kv_failed() -> dict[str, bool]:
        return {"fallback": False}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--role", choices=["prefill", "decode"], required=True)
    p.add_argument("--cluster", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--gateway", required=True)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=8192)
    args = p.parse_args()
    uvicorn.run(create_app(args), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
