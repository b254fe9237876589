"""Serving benchmark on the embedded default deployment, one run, three routing policies.

For each policy (`prfaas`: the length threshold; `homogeneous`: every prefill in the local PD
cluster, i.e. all-local; `naive`: every prefill on the remote PrfaaS cluster, i.e.
all-remote) it starts `prfaas serve` (gateway, PD-P, PD-D, remote prefill behind the
emulated WAN link), then drives it with `prfaas bench serve`'s client:
  1. long prompts one at a time: their TTFT through the remote path (all-remote) versus
     prefilled locally (all-local);
  2. a mixed-length workload at a fixed request rate: request and token throughput, TTFT,
     TPOT, and the share of requests per route.

    .venv/bin/python benchmarks/serve.py [--num-prompts 40] [--request-rate 1] [--json]

Everything runs on this machine's CPU; the three workers share its cores, so the remote
cluster adds no compute the local one lacks: the figures show routing and transfer costs,
not the paper's heterogeneous-hardware gain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.` as a script too

from benchmarks.serve_process import start_serve, stop_serve

from prfaas.bench.data import BenchRequest, random_dataset
from prfaas.bench.load import BenchReport, run_bench
from prfaas.deploy.config import default_config
from prfaas.deploy.launcher import free_port

POLICIES = {"prfaas": "PrfaaS routing", "homogeneous": "all-local", "naive": "all-remote"}


def _start(policy: str, threshold: int | None, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cfg = default_config().model_dump(mode="json")
    cfg["port"] = port
    cfg["policy"] = {"name": policy, "threshold_tokens": threshold}
    return start_serve(policy, cfg, tmp, 900), f"http://127.0.0.1:{port}"


def _threshold(base_url: str) -> float:
    return float(httpx.get(base_url + "/status", timeout=5).json()["threshold_tokens"])


def _bench(
    base_url: str, requests: list[BenchRequest], rate: float, concurrency: int | None = None
) -> BenchReport:
    return asyncio.run(
        run_bench(base_url, requests, request_rate=rate, max_concurrency=concurrency)
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="prfaas-bench-serve-"))
    long_prompts = random_dataset(args.num_long, args.long_len, args.output_len, 0.0, seed=7)
    mixed = random_dataset(args.num_prompts, args.input_len, args.output_len, 0.9, seed=11)
    results: dict[str, Any] = {"policies": {}, "setup": vars(args)}
    for policy in POLICIES:
        proc, base = _start(policy, args.threshold, tmp)
        try:
            t = _threshold(base)
            _bench(base, random_dataset(2, 64, 4, 0.0, seed=1), float("inf"))  # warm-up
            long_report = (
                _bench(base, long_prompts, float("inf"), concurrency=1)
                if policy != "prfaas"
                else None  # the long-prompt TTFT compares all-remote with all-local
            )
            mixed_report = _bench(base, mixed, args.request_rate)
        finally:
            stop_serve(proc)
        results["policies"][policy] = {
            "threshold_tokens": t,
            "long": asdict(long_report) if long_report else None,
            "mixed": asdict(mixed_report),
        }
    return results


def _print(results: dict[str, Any]) -> None:
    pol = results["policies"]
    setup = results["setup"]
    print(
        f"long prompts ({setup['num_long']} x {setup['long_len']} words, one at a time): "
        "TTFT ms median / P90"
    )
    for policy in ("naive", "homogeneous"):
        ttft = pol[policy]["long"]["ttft_ms"]
        print(f"  {POLICIES[policy]:<16}{ttft['median']:>10.0f}{ttft['p90']:>10.0f}")
    print(
        f"mixed workload ({setup['num_prompts']} prompts, {setup['input_len']} words "
        f"+-90%, {setup['output_len']} output tokens, {setup['request_rate']} req/s):"
    )
    print(
        f"  {'policy':<16}{'t':>7}{'req/s':>8}{'out tok/s':>11}{'TTFT med':>10}"
        f"{'TTFT P90':>10}{'TPOT med':>10}  routes"
    )
    for policy, label in POLICIES.items():
        m = pol[policy]["mixed"]
        routes = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(m["route_share"].items()))
        print(
            f"  {label:<16}{pol[policy]['threshold_tokens']:>7.0f}"
            f"{m['request_throughput']:>8.2f}{m['output_throughput']:>11.1f}"
            f"{m['ttft_ms']['median']:>10.0f}{m['ttft_ms']['p90']:>10.0f}"
            f"{m['tpot_ms']['median']:>10.1f}  {routes} (failed {m['failed']})"
        )


def main() -> int:
    p = argparse.ArgumentParser(description="PrfaaS vs all-local vs all-remote, one run")
    p.add_argument("--num-prompts", type=int, default=40)
    p.add_argument("--input-len", type=int, default=1024, help="mixed: mean prompt words")
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--request-rate", type=float, default=0.5)
    p.add_argument("--num-long", type=int, default=6)
    p.add_argument("--long-len", type=int, default=1800, help="words per long prompt")
    p.add_argument("--threshold", type=int, default=None, help="pin t (default: measured)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
