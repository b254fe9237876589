"""Serving benchmark: the embedded default deployment on each engine, one run, one workload.

Three deployments of the embedded default (PD cluster: PD-P, PD-D; PrfaaS cluster: one prefill
instance behind the emulated 1 Gbit/s, 10 ms WAN link with mutual TLS), one after the other:
every instance on the reference engine, every instance on vLLM, and mixed (the PrfaaS
prefill instance on vLLM, the PD cluster on the reference engine: vLLM's KV lands in the
reference engine). Each gets the same seeded mixed-length workload through `prfaas bench
serve`'s client at a fixed request rate, the routing threshold pinned so that all three
split it alike. Reported: request and token throughput, TTFT per path (remote: prefilled
by the PrfaaS cluster, its KV over the link; local: PD-P), from the gateway's audit log the
KV bytes (as stored and on the wire) and the transfer time (opened to acknowledged) per
remote request, and from `prfaas status` how many of those KV transfers a decode instance
did not land and recomputed (its fallback count, before and after the workload).

    .venv-vllm/bin/python benchmarks/serve_engines.py [--num-prompts 16] [--json]

Runs in the vLLM venv (`make setup-vllm`). Every instance gets one thread and a 0.25 GiB KV
pool (vLLM's per-engine OpenMP threads otherwise starve each other on few cores). All
three instances share this machine's cores: the figures compare the engines under prfaas's
routing and transport, not hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.` as a script too

from benchmarks.serve_process import start_serve, stop_serve

from prfaas.bench.data import random_dataset
from prfaas.bench.load import run_bench
from prfaas.deploy.config import default_config
from prfaas.deploy.launcher import free_port

# deployment -> (the PD cluster's engine, the PrfaaS cluster's engine)
DEPLOYMENTS = {
    "reference": ("reference", "reference"),
    "vllm": ("vllm", "vllm"),
    "mixed": ("reference", "vllm"),
}
START_TIMEOUT_S = 900.0
HEARTBEAT_WAIT_S = 2.0  # four worker heartbeats: the gateway's fallback counts are current


def config(name: str, args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any], str]:
    cfg = default_config().model_dump(mode="json")
    port = free_port()
    cfg["port"] = port
    cfg["audit_log"] = str(tmp / f"{name}.audit.jsonl")
    cfg["max_model_len"] = 2048  # vLLM reserves a whole model length (8192) in its 0.25 GiB
    cfg["policy"] = {"name": "prfaas", "threshold_tokens": args.threshold}
    for cluster, engine in zip(cfg["clusters"], DEPLOYMENTS[name], strict=True):
        cluster["engine"] = engine
        for inst in cluster["instances"]:
            inst["num_threads"] = 1
            inst["kv_cache_gb"] = 0.25
    return cfg, f"http://127.0.0.1:{port}"


def audit_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def transfers(path: Path, skip: int) -> dict[str, Any]:
    """KV bytes and transfer seconds per remote request, from the audit log's ``kv_transfer``
    records past its first ``skip`` lines (the warm-up's). The log also holds a ``request``
    line per routed request: those are not transfers."""
    records = [json.loads(line) for line in audit_lines(path)[skip:]]
    shipped = [r for r in records if r["event"] == "kv_transfer"]
    ok = [r for r in shipped if r["outcome"] == "ok"]

    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in ok) if ok else 0.0

    return {
        "num_ok": len(ok),
        "num_failed": len(shipped) - len(ok),
        "kv_bytes_mean": mean("kv_bytes"),
        "wire_bytes_mean": mean("wire_bytes"),
        "transfer_ms_median": 1000 * statistics.median(r["seconds"] for r in ok) if ok else 0.0,
        "transfer_ms_max": 1000 * max((r["seconds"] for r in ok), default=0.0),
        "per_request": [
            {k: r[k] for k in ("request_id", "kv_bytes", "wire_bytes", "seconds", "reason")}
            for r in shipped
        ],
    }


def fallbacks(base: str) -> dict[str, int]:
    """Each instance's count of KV that did not land (recomputed locally), from `prfaas
    status` (the workers' heartbeats)."""
    data = httpx.get(f"{base}/status", timeout=10.0).raise_for_status().json()
    return {i["name"]: i["fallbacks"] for i in data["instances"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="prfaas-bench-engines-"))
    workload = random_dataset(args.num_prompts, args.input_len, args.output_len, 0.9, seed=11)
    results: dict[str, Any] = {"setup": vars(args), "logs": str(tmp), "deployments": {}}
    for name in args.deployments:
        cfg, base = config(name, args, tmp)
        started_s = time.monotonic()
        proc = start_serve(name, cfg, tmp, START_TIMEOUT_S, "--log-dir", str(tmp / f"{name}-logs"))
        start_s = time.monotonic() - started_s
        try:
            warm = random_dataset(2, 64, 4, 0.0, seed=1)
            asyncio.run(run_bench(base, warm, request_rate=float("inf")))
            # the gateway keeps the file open: count the warm-up's records, never unlink
            warm_records = len(audit_lines(Path(cfg["audit_log"])))
            time.sleep(HEARTBEAT_WAIT_S)
            before = fallbacks(base)
            report = asyncio.run(run_bench(base, workload, request_rate=args.request_rate))
            time.sleep(HEARTBEAT_WAIT_S)
            after = fallbacks(base)
        finally:
            stop_serve(proc)
        results["deployments"][name] = {
            "start_s": start_s,
            "bench": asdict(report),
            "transfers": transfers(Path(cfg["audit_log"]), warm_records),
            "fallbacks": sum(after[n] - before.get(n, 0) for n in after),
        }
        (tmp / "results.json").write_text(json.dumps(results, indent=2))  # as each one ends
    return results


def _print(results: dict[str, Any]) -> None:
    s = results["setup"]
    print(
        f"{s['num_prompts']} prompts, {s['input_len']} words +-90%, {s['output_len']} output "
        f"tokens, {s['request_rate']} req/s, threshold {s['threshold']} tokens"
    )
    print(
        f"  {'deployment':<11}{'req/s':>7}{'out tok/s':>10}{'TTFT remote':>13}"
        f"{'TTFT local':>12}{'KV/remote req':>15}{'on wire':>12}{'transfer ms':>13}"
        f"{'shipped':>9}{'fallbacks':>10}  failed"
    )
    for name, d in results["deployments"].items():
        b, t = d["bench"], d["transfers"]
        by_route = b["ttft_ms_by_route"]

        def ttft(route: str, by_route: dict[str, Any] = by_route) -> str:
            p = by_route.get(route)
            return "-" if p is None else f"{p['median']:.0f}/{p['p90']:.0f}"

        transfer = f"{t['transfer_ms_median']:.0f}/{t['transfer_ms_max']:.0f}"
        shipped = f"{t['num_ok']}/{t['num_ok'] + t['num_failed']}"
        print(
            f"  {name:<11}{b['request_throughput']:>7.3f}{b['output_throughput']:>10.2f}"
            f"{ttft('prfaas'):>13}{ttft('pd-p'):>12}{t['kv_bytes_mean'] / 2**20:>11.2f} MiB"
            f"{t['wire_bytes_mean'] / 2**20:>8.2f} MiB{transfer:>13}{shipped:>9}"
            f"{d['fallbacks']:>10}  {b['failed']}"
        )
    print(
        "  TTFT: median/P90 ms; KV: mean per acknowledged transfer, as stored and on the wire;"
        " transfer: median/max ms, opened to acknowledged; shipped: acknowledged/dispatched;"
        " fallbacks: KV recomputed by a decode instance"
    )


def main() -> int:
    p = argparse.ArgumentParser(description="reference vs vLLM vs mixed instances, one run")
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--input-len", type=int, default=300, help="mean prompt words")
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--request-rate", type=float, default=0.2)
    p.add_argument("--threshold", type=int, default=256, help="routing threshold t (pinned)")
    p.add_argument("--deployments", nargs="+", choices=list(DEPLOYMENTS), default=list(DEPLOYMENTS))
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
