"""/metrics after traffic, the scrape hook, and `prfaas bench serve` against a live gateway."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import Gauge

from prfaas.bench.data import random_dataset, trace_dataset
from prfaas.bench.load import run_bench
from prfaas.cli import main
from prfaas.gateway.metrics import GatewayMetrics
from tests.gateway.conftest import API_KEY, LocalServer

TRACE = Path(__file__).resolve().parents[3] / "shared/data/mooncake-traces/synthetic_trace.jsonl"


def test_metrics_have_histograms_and_routes(local_server: LocalServer) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {"prompt": "w5 w6 w7", "max_tokens": 4, "ignore_eos": True}
    assert httpx.post(f"{local_server.base_url}/v1/completions", json=body, headers=auth).is_success
    r = httpx.get(f"{local_server.base_url}/metrics")
    assert r.status_code == 200
    text = r.text
    for name in (
        "prfaas_time_to_first_token_seconds_bucket",
        "prfaas_time_per_output_token_seconds_bucket",
        "prfaas_e2e_request_latency_seconds_count",
        "prfaas_requests_in_flight",
    ):
        assert name in text
    assert 'prfaas_requests_total{route="local",status="200"}' in text


def test_scrape_hook_refreshes_added_gauges() -> None:
    metrics = GatewayMetrics()
    threshold = Gauge("prfaas_threshold_tokens", "Routing threshold t", registry=metrics.registry)
    metrics.add_scrape_hook(lambda: threshold.set(4096))
    assert b"prfaas_threshold_tokens 4096.0" in metrics.render()


def test_bench_reports_sane_numbers(local_server: LocalServer) -> None:
    requests = random_dataset(8, input_len=20, output_len=6, range_ratio=0.5, seed=1)
    report = asyncio.run(
        run_bench(local_server.base_url, requests, request_rate=50.0, api_key=API_KEY)
    )
    assert report.completed == 8 and report.failed == 0
    assert report.total_output_tokens == sum(r.output_len for r in requests)
    assert report.route_share == {"local": 1.0}
    assert 0 < report.ttft_ms.median <= report.ttft_ms.p99 <= report.e2e_ms.p99
    assert report.tpot_ms.mean > 0 and report.itl_ms.p90 > 0
    assert report.request_throughput > 0 and report.output_throughput > 0
    assert "Mean TTFT (ms):" in report.format()
    assert report.ttft_ms_by_route["local"] == report.ttft_ms  # every request took that path
    local_server.check_engine()


def test_bench_cli_json(local_server: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "serve", "--base-url", local_server.base_url, "--api-key", API_KEY]
    argv += ["--num-prompts", "3", "--input-len", "8", "--output-len", "3", "--json"]
    assert main(argv) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert out["completed"] == 3 and out["route_share"] == {"local": 1.0}


def test_trace_dataset_keeps_prefix_sharing() -> None:
    if not TRACE.is_file():
        pytest.skip("Mooncake trace not present")
    reqs = trace_dataset(TRACE, 50, length_scale=1 / 64)
    assert len(reqs) == 50
    assert all(abs(len(r.prompt.split()) - r.prompt_len) <= 1 for r in reqs)
    assert reqs[-1].arrival_s is not None and reqs[-1].arrival_s > 0
    # Records sharing their first hash id share their first block of text.
    first_words = [tuple(r.prompt.split()[:8]) for r in reqs]
    assert len(set(first_words)) < len(first_words)
