"""`prfaas bench serve`: an OpenAI-API load generator reporting what `vllm bench serve` does.

Requests go to ``/v1/completions`` with streaming and ``include_usage``; arrivals are Poisson
at ``request_rate`` (all at once if infinite) or follow a trace's timestamps. Per request it
records TTFT, the gaps between streamed chunks (ITL), TPOT = (E2E - TTFT) / (tokens - 1), and
the route (``x-prfaas-route``); the report gives mean, median, P90 and P99 of each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import httpx

from prfaas.bench.data import BenchRequest

logger = logging.getLogger(__name__)


@dataclass
class RequestResult:
    ok: bool = False
    error: str = ""
    route: str = "none"
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Percentiles:
    mean: float
    median: float
    p90: float
    p99: float

    @staticmethod
    def of(values: list[float], scale: float = 1000.0) -> Percentiles:
        if not values:
            return Percentiles(0.0, 0.0, 0.0, 0.0)
        ordered = sorted(v * scale for v in values)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

        return Percentiles(
            statistics.fmean(ordered), statistics.median(ordered), pct(0.9), pct(0.99)
        )


@dataclass(frozen=True)
class BenchReport:
    num_prompts: int
    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # requests/s
    output_throughput: float  # output tokens/s
    total_token_throughput: float  # (input + output) tokens/s
    ttft_ms: Percentiles
    tpot_ms: Percentiles
    itl_ms: Percentiles
    e2e_ms: Percentiles
    route_share: dict[str, float]  # route kind -> share of completed requests
    errors: dict[str, int]
    ttft_ms_by_route: dict[str, Percentiles] = field(default_factory=dict)  # route kind -> TTFT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def format(self) -> str:
        lines = ["{:=^56}".format(" Serving Benchmark Result ")]

        def row(name: str, value: float | int | str) -> None:
            shown = f"{value:.2f}" if isinstance(value, float) else str(value)
            lines.append(f"{name:<40}{shown:>16}")

        row("Successful requests:", self.completed)
        row("Failed requests:", self.failed)
        row("Benchmark duration (s):", self.duration_s)
        row("Total input tokens:", self.total_input_tokens)
        row("Total generated tokens:", self.total_output_tokens)
        row("Request throughput (req/s):", self.request_throughput)
        row("Output token throughput (tok/s):", self.output_throughput)
        row("Total token throughput (tok/s):", self.total_token_throughput)
        for title, short, p in (
            ("Time to First Token", "TTFT", self.ttft_ms),
            ("Time per Output Token (excl. 1st token)", "TPOT", self.tpot_ms),
            ("Inter-token Latency", "ITL", self.itl_ms),
            ("End-to-end Latency", "E2EL", self.e2e_ms),
        ):
            lines.append(f"{title:-^56}")
            row(f"Mean {short} (ms):", p.mean)
            row(f"Median {short} (ms):", p.median)
            row(f"P90 {short} (ms):", p.p90)
            row(f"P99 {short} (ms):", p.p99)
        lines.append("{:-^56}".format("Routes"))
        for route, share in sorted(self.route_share.items()):
            row(f"Share routed {route}:", f"{100 * share:.1f}%")
        for route, p in sorted(self.ttft_ms_by_route.items()):
            row(f"Median / P90 TTFT {route} (ms):", f"{p.median:.0f} / {p.p90:.0f}")
        for error, count in sorted(self.errors.items()):
            row(f"Error {error[:32]}:", count)
        lines.append("=" * 56)
        return "\n".join(lines)


async def send_one(
    client: httpx.AsyncClient, model: str | None, req: BenchRequest, headers: dict[str, str]
) -> RequestResult:
    body = {
        "prompt": req.prompt,
        "max_tokens": req.output_len,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if model is not None:
        body["model"] = model
    result = RequestResult()
    start = time.perf_counter()
    last = start
    chunks = 0
    try:
        async with client.stream("POST", "/v1/completions", json=body, headers=headers) as r:
            result.route = r.headers.get("x-prfaas-route", "none").split(" ", 1)[0]
            if r.status_code != 200:
                await r.aread()
                result.error = f"HTTP {r.status_code}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    result.error = "stream error"
                    return result
                if event.get("usage"):
                    result.prompt_tokens = event["usage"]["prompt_tokens"]
                    result.output_tokens = event["usage"]["completion_tokens"]
                if any(c.get("text") for c in event.get("choices", [])):
                    now = time.perf_counter()
                    if chunks == 0:
                        result.ttft_s = now - start
                    else:
                        result.itl_s.append(now - last)
                    last, chunks = now, chunks + 1
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = type(exc).__name__
        return result
    result.e2e_s = time.perf_counter() - start
    result.output_tokens = result.output_tokens or chunks
    result.ok = chunks > 0
    if not result.ok:
        result.error = "no tokens"
    return result


async def run_bench(
    base_url: str,
    requests: list[BenchRequest],
    *,
    request_rate: float = math.inf,
    max_concurrency: int | None = None,
    model: str | None = None,
    api_key: str | None = None,
    seed: int = 0,
    timeout_s: float = 600.0,
) -> BenchReport:
    """Send every request (Poisson arrivals at ``request_rate``, or a trace's timestamps when
    the rate is infinite and the requests carry them) and summarize the results."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rng = random.Random(seed)
    limit = asyncio.Semaphore(max_concurrency or len(requests) or 1)
    limits = httpx.Limits(max_connections=max_concurrency or 1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:

        async def one(req: BenchRequest, at_s: float) -> RequestResult:
            await asyncio.sleep(max(0.0, at_s - (time.perf_counter() - start)))
            async with limit:
                return await send_one(client, model, req, headers)

        start = time.perf_counter()
        t, tasks = 0.0, []
        for req in requests:
            if math.isinf(request_rate):
                at = req.arrival_s or 0.0
            else:
                at, t = t, t + rng.expovariate(request_rate)
            tasks.append(asyncio.create_task(one(req, at)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return summarize(list(results), duration)


def summarize(results: list[RequestResult], duration_s: float) -> BenchReport:
    ok = [r for r in results if r.ok]
    n_in = sum(r.prompt_tokens for r in ok)
    n_out = sum(r.output_tokens for r in ok)
    routes = Counter(r.route for r in ok)
    dur = max(duration_s, 1e-9)
    return BenchReport(
        num_prompts=len(results),
        completed=len(ok),
        failed=len(results) - len(ok),
        duration_s=duration_s,
        total_input_tokens=n_in,
        total_output_tokens=n_out,
        request_throughput=len(ok) / dur,
        output_throughput=n_out / dur,
        total_token_throughput=(n_in + n_out) / dur,
        ttft_ms=Percentiles.of([r.ttft_s for r in ok]),
        tpot_ms=Percentiles.of(
            [(r.e2e_s - r.ttft_s) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
        ),
        itl_ms=Percentiles.of([gap for r in ok for gap in r.itl_s]),
        e2e_ms=Percentiles.of([r.e2e_s for r in ok]),
        route_share={k: v / len(ok) for k, v in routes.items()} if ok else {},
        errors=dict(Counter(r.error for r in results if not r.ok)),
        ttft_ms_by_route={
            route: Percentiles.of([r.ttft_s for r in ok if r.route == route]) for route in routes
        },
    )
