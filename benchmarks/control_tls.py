"""What mutual TLS costs the gateway per worker call: the gateway's ``WorkerClient`` (aiohttp,
kept-alive connections) POSTs ``/kv_failed`` to a worker's real control app (uvicorn, the
stand-in engine of tests/worker) over plain HTTP and over HTTPS with mutual TLS, alternating
rounds so that both see the same machine load; prints the median latency of each.

    .venv/bin/python benchmarks/control_tls.py [--calls 2000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.gateway.conftest import ServerThread
from tests.worker.test_app_seam import StandIn

from prfaas.config import EngineConfig
from prfaas.control_plane import GATEWAY, ControlTls
from prfaas.dispatch.worker_client import WorkerClient
from prfaas.messages import KvFailed
from prfaas.transfer.tls import write_certs
from prfaas.worker import Worker, WorkerConfig, create_worker_app

TOKEN = "bench-token"


def serve(certs: Path | None) -> ServerThread:
    config = WorkerConfig(
        name="w0",
        cluster="local",
        role="decode",
        host="127.0.0.1",
        port=1,
        gateway_urls=("https://127.0.0.1:1" if certs else "http://127.0.0.1:1",),
        cluster_token=TOKEN,
        engine=EngineConfig(model=None),
        certs_dir=certs,
        insecure_control=certs is None,
    )
    worker = Worker(config, StandIn())
    options = None if worker.control is None else worker.control.uvicorn_options()
    return ServerThread(create_worker_app(worker), lifespan="on", options=options).__enter__()


async def round_s(url: str, client: WorkerClient, calls: int) -> list[float]:
    body = KvFailed(request_id="r", reason="bench").encode()
    await client.post(url + "/kv_failed", body, 10.0)  # connect (and handshake) first
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        status, _ = await client.post(url + "/kv_failed", body, 10.0)
        out.append(time.perf_counter() - start)
        assert status == 200
    return out


async def main_async(calls: int) -> dict[str, float]:
    certs = Path(tempfile.mkdtemp(prefix="prfaas-bench-certs-"))
    write_certs(certs, ["local"])
    plain_server, tls_server = serve(None), serve(certs / "local")
    plain = WorkerClient(TOKEN)
    gateway = ControlTls.from_dir(certs, GATEWAY).client_context()
    mtls = WorkerClient(TOKEN, gateway, lambda url: "local")
    times: dict[str, list[float]] = {"plain_http_ms": [], "mutual_tls_ms": []}
    try:
        for _ in range(4):  # alternate: both see the same load
            times["plain_http_ms"] += await round_s(plain_server.base_url, plain, calls // 4)
            times["mutual_tls_ms"] += await round_s(tls_server.base_url, mtls, calls // 4)
    finally:
        await plain.aclose()
        await mtls.aclose()
        plain_server.__exit__()
        tls_server.__exit__()
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = asyncio.run(main_async(args.calls))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value:.3f}")


if __name__ == "__main__":
    main()
