"""An instant worker for gateway benchmarks: the tests' fake worker (``tests/fakes/worker.py``:
the real control-plane messages, nothing computed) as a process that registers with a gateway
and heartbeats every 0.5 s.

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
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/

from tests.fakes.worker import FakeWorker

from prfaas.messages import TOKEN_HEADER


def create_app(args: argparse.Namespace) -> FastAPI:
    token = os.environ["PRFAAS_CLUSTER_TOKEN"]
    worker = FakeWorker(args.name, args.role, args.cluster, max_model_len=args.max_model_len)
    worker.http_url = f"http://127.0.0.1:{args.port}"
    worker.behaviour.tokens = args.tokens

    async def gateway_loop() -> None:
        async with httpx.AsyncClient(
            base_url=args.gateway, headers={TOKEN_HEADER: token}, timeout=5.0
        ) as client:
            registered = False
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if not registered:
                        r = await client.post("/internal/register", content=worker.info().encode())
                        registered = r.status_code == 200
                    if registered:
                        hb = worker.heartbeat().encode()
                        r = await client.post("/internal/heartbeat", content=hb)
                        registered = r.status_code == 200
                await asyncio.sleep(0.5)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(gateway_loop())
        yield
        task.cancel()

    worker.app.router.lifespan_context = lifespan
    return worker.app


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
