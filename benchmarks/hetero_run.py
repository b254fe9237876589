"""One deployment of benchmarks/hetero.py: `prfaas serve` on a generated deploy.yaml, the
workload through `prfaas bench serve`'s client, and what /status and /metrics say after."""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from benchmarks.serve_process import start_serve, stop_serve

from prfaas.bench.data import BenchRequest
from prfaas.bench.load import BenchReport, RequestResult, send_one, summarize
from prfaas.deploy.launcher import free_port

START_TIMEOUT_S = 600.0
REMOTE_CLUSTER = "remote"
KV_BYTES = re.compile(r'^prfaas_kv_transfer_bytes_total\{[^}]*="' + REMOTE_CLUSTER + r'"\} (\S+)$')


@dataclass(frozen=True)
class DeploymentRun:
    kind: str
    report: BenchReport
    results: list[RequestResult]
    slo_ok: int  # completed within both SLO bounds
    threshold_start_tokens: float
    threshold_end_tokens: float
    threshold: dict[str, Any]  # /status "threshold": where t came from, the profiles
    egress_bytes: float  # KV bytes over the PrfaaS -> PD link during the run
    fallbacks: int  # prompts a decode instance prefilled itself instead of using shipped KV
    instances: list[dict[str, Any]]
    start_s: float  # `prfaas serve` until it serves (workers loaded, profiled, t solved)
    stop_s: float

    @property
    def slo_throughput(self) -> float:
        return self.slo_ok / max(self.report.duration_s, 1e-9)

    @property
    def egress_gbps(self) -> float:
        return self.egress_bytes * 8 / max(self.report.duration_s, 1e-9) / 1e9

    def to_json(self) -> dict[str, Any]:
        r = self.report
        return {
            "completed": r.completed,
            "failed": r.failed,
            "errors": r.errors,
            "duration_s": r.duration_s,
            "throughput_rps": r.request_throughput,
            "slo_ok": self.slo_ok,
            "slo_throughput_rps": self.slo_throughput,
            "ttft_ms": asdict(r.ttft_ms),
            "tpot_ms": asdict(r.tpot_ms),
            "route_share": r.route_share,
            "prompt_tokens": [x.prompt_tokens for x in self.results],
            "output_tokens": [x.output_tokens for x in self.results],
            "threshold_start_tokens": self.threshold_start_tokens,
            "threshold_end_tokens": self.threshold_end_tokens,
            "threshold": self.threshold,
            "egress_bytes": self.egress_bytes,
            "egress_gbps": self.egress_gbps,
            "fallbacks": self.fallbacks,
            "instances": [(i["name"], i["cluster"], i["role"]) for i in self.instances],
            "start_s": self.start_s,
            "stop_s": self.stop_s,
        }


def _egress_bytes(base: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    return sum(float(m.group(1)) for line in text.splitlines() if (m := KV_BYTES.match(line)))


async def _drive(
    base: str, requests: list[BenchRequest], rate: float, seed: int
) -> tuple[list[RequestResult], float]:
    """Every request, Poisson arrivals at ``rate`` (all at once if infinite): the same
    per-request client as `prfaas bench serve`, keeping each request's result."""
    import random

    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base, timeout=START_TIMEOUT_S, limits=limits) as client:
        start = time.perf_counter()

        async def one(req: BenchRequest, at_s: float) -> RequestResult:
            await asyncio.sleep(max(0.0, at_s - (time.perf_counter() - start)))
            return await send_one(client, None, req, {})

        t, tasks = 0.0, []
        for req in requests:
            tasks.append(asyncio.create_task(one(req, t)))
            if not math.isinf(rate):
                t += rng.expovariate(rate)
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start


def run_deployment(
    kind: str,
    make_config: Callable[[int], dict[str, Any]],
    requests: list[BenchRequest],
    a: argparse.Namespace,
    log_dir: Path,
) -> DeploymentRun:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    proc = start_serve(
        kind,
        make_config(port),
        log_dir,
        START_TIMEOUT_S,
        "--log-dir",
        str(log_dir / f"{kind}-workers"),
    )
    start_s = time.monotonic() - t0
    try:
        status = httpx.get(base + "/status", timeout=10).json()
        before = _egress_bytes(base)
        results, duration = asyncio.run(_drive(base, requests, a.request_rate, a.seed))
        egress = _egress_bytes(base) - before
        end = httpx.get(base + "/status", timeout=10).json()
    finally:
        t0 = time.monotonic()
        stop_serve(proc)
    stop_s = time.monotonic() - t0
    slo_ok = sum(
        1
        for r in results
        if r.ok
        and r.ttft_s <= a.slo_ttft_s
        and (
            r.output_tokens <= 1
            or (r.e2e_s - r.ttft_s) / (r.output_tokens - 1) * 1e3 <= a.slo_tpot_ms
        )
    )
    return DeploymentRun(
        kind=kind,
        report=summarize(results, duration),
        results=results,
        slo_ok=slo_ok,
        threshold_start_tokens=float(status["threshold_tokens"]),
        threshold_end_tokens=float(end["threshold_tokens"]),
        threshold=status.get("threshold") or {},
        egress_bytes=egress,
        fallbacks=sum(int(i["fallbacks"]) for i in end["instances"]),
        instances=end["instances"],
        start_s=start_s,
        stop_s=stop_s,
    )
