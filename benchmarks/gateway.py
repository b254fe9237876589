"""Gateway overhead and capacity with instant workers (issue goals: <= 2 ms added TTFT at the
median; >= 500 streamed requests/s).

Starts `prfaas serve` with no spawned workers (gateway only, pinned to its own CPUs) and three
instant workers (`benchmarks/instant_worker.py`: the real control-plane messages, no
compute) on the other CPUs, then measures, in one run:
  1. TTFT directly at the decode worker (POST /decode, first NDJSON line) and through the
     gateway (POST /v1/completions, stream, first SSE chunk with text), sequentially, for a
     short prompt (PD-P path) and a long one (PrfaaS path); the difference is the gateway's
     added latency.
  2. Streamed completions per second the gateway sustains: client processes, each with many
     concurrent streams, for a fixed duration.

    .venv/bin/python benchmarks/gateway.py [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from prfaas.deploy.launcher import free_port
from prfaas.messages import DecodeCommand, SamplingSpec

HERE = Path(__file__).resolve().parent
TOKEN = "bench-gateway-token"
SHORT = "What is the capital of France? Answer in one word."
LONG = " ".join(f"word{i % 97}" for i in range(300))  # above the pinned t: remote path
THRESHOLD = 64


def _deploy_yaml(port: int) -> dict[str, object]:
    return {
        "port": port,
        "served_model_name": "bench",
        "clusters": [
            {
                "name": "local",
                "kind": "pd",
                "instances": [
                    {"name": "pd-p-0", "role": "prefill", "spawn": False},
                    {"name": "pd-d-0", "role": "decode", "spawn": False},
                ],
            },
            {
                "name": "remote",
                "kind": "prfaas",
                "instances": [{"name": "prfaas-0", "role": "prefill", "spawn": False}],
            },
        ],
        # Plaintext by choice (insecure: true): this measures the gateway, not TLS; the
        # instant workers register over plain HTTP on the public port.
        "links": [
            {"src": "remote", "dst": "local", "tls": False, "insecure": True, "emulate": False}
        ],
        "control_plane": {"insecure": True},
        "policy": {"threshold_tokens": THRESHOLD},
    }


def _taskset(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if cpus and os.cpu_count() and os.cpu_count() > 1 else []


async def _first_chunk_s(client: httpx.AsyncClient, method: str, url: str, **kw: object) -> float:
    start = time.perf_counter()
    async with client.stream(method, url, **kw) as r:  # type: ignore[arg-type]
        r.raise_for_status()
        first = 0.0
        async for line in r.aiter_lines():
            if first == 0.0 and line and ('"text"' in line):
                first = time.perf_counter() - start
        return first


async def _ttft(base: str, decode_url: str, n: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        prompt_ids = list(range(100, 112))
        cmd = DecodeCommand(
            request_id="direct",
            prompt_token_ids=prompt_ids,
            params=SamplingSpec(max_tokens=16, temperature=0),
            tenant_salt_hex="",
            expect_kv=False,
            deadline_s=30,
        )
        cases = {
            "direct at worker": lambda i: _first_chunk_s(
                client,
                "POST",
                decode_url + "/decode",
                content=cmd.model_copy(update={"request_id": f"d{i}"}).encode(),
            ),
            "gateway, short (pd-p)": lambda i: _first_chunk_s(
                client,
                "POST",
                base + "/v1/completions",
                json={"model": "bench", "prompt": SHORT, "max_tokens": 16, "stream": True},
            ),
            "gateway, long (prfaas)": lambda i: _first_chunk_s(
                client,
                "POST",
                base + "/v1/completions",
                json={"model": "bench", "prompt": LONG, "max_tokens": 16, "stream": True},
            ),
        }
        for name, one in cases.items():
            for i in range(20):  # warm-up
                await one(i)
            samples = [await one(i) for i in range(n)]
            samples.sort()
            out[name] = {
                "median_ms": 1000 * statistics.median(samples),
                "p90_ms": 1000 * samples[int(0.9 * (len(samples) - 1))],
            }
    return out


async def _client_load(base: str, concurrency: int, duration_s: float) -> tuple[int, int]:
    done = failed = 0
    end = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def loop() -> None:
            nonlocal done, failed
            while time.monotonic() < end:
                try:
                    async with client.stream(
                        "POST",
                        base + "/v1/completions",
                        json={"model": "bench", "prompt": SHORT, "max_tokens": 16, "stream": True},
                    ) as r:
                        async for _ in r.aiter_raw():
                            pass
                        ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    done += 1
                else:
                    failed += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done, failed


def _throughput(args: argparse.Namespace, base: str) -> dict[str, float]:
    per = max(1, args.concurrency // args.clients)
    procs = [
        subprocess.Popen(
            [
                *_taskset(args.other_cpus),
                sys.executable,
                __file__,
                "--client",
                base,
                str(per),
                str(args.duration),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(args.clients)
    ]
    done = failed = 0
    for p in procs:
        out, _ = p.communicate(timeout=args.duration + 120)
        d, f = json.loads(out)
        done, failed = done + d, failed + f
    return {
        "streams_per_s": done / args.duration,
        "completed": done,
        "failed": failed,
        "concurrency": per * args.clients,
        "duration_s": args.duration,
    }


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_healthy(base: str, n: int, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            status = httpx.get(base + "/status", timeout=2).json()
            if sum(i["healthy"] for i in status["instances"]) >= n:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    raise TimeoutError("instant workers did not register")


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="prfaas-bench-gw-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    (tmp / "deploy.yaml").write_text(yaml.safe_dump(_deploy_yaml(port)))
    env = dict(os.environ, PRFAAS_CLUSTER_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    *_taskset(args.gateway_cpus),
                    sys.executable,
                    "-m",
                    "prfaas.cli",
                    "serve",
                    "--config",
                    str(tmp / "deploy.yaml"),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=(tmp / "gateway.log").open("wb"),
                start_new_session=True,
            )
        )
        worker_ports = {}
        for name, role, cluster in (
            ("pd-p-0", "prefill", "local"),
            ("pd-d-0", "decode", "local"),
            ("prfaas-0", "prefill", "remote"),
        ):
            worker_ports[name] = free_port()
            procs.append(
                subprocess.Popen(
                    [
                        *_taskset(args.other_cpus),
                        sys.executable,
                        str(HERE / "instant_worker.py"),
                        *("--name", name, "--role", role, "--cluster", cluster),
                        *("--port", str(worker_ports[name]), "--gateway", base),
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=(tmp / f"{name}.log").open("wb"),
                    start_new_session=True,
                )
            )
        _wait_healthy(base, 3, 300)
        decode_url = f"http://127.0.0.1:{worker_ports['pd-d-0']}"
        ttft = asyncio.run(_ttft(base, decode_url, args.requests))
        added = ttft["gateway, short (pd-p)"]["median_ms"] - ttft["direct at worker"]["median_ms"]
        added_remote = (
            ttft["gateway, long (prfaas)"]["median_ms"] - ttft["direct at worker"]["median_ms"]
        )
        busy_before = _cpu_s(procs[0].pid)
        load = _throughput(args, base)
        # Gateway CPU over the load phase: near 1.0 (of its one CPU) means the gateway is
        # the bottleneck; well below, the clients or the workers on the other CPU are.
        load["gateway_cpu_share"] = (_cpu_s(procs[0].pid) - busy_before) / args.duration
        load["gateway_cpu_ms_per_stream"] = (
            1000 * load["gateway_cpu_share"] * args.duration / max(load["completed"], 1)
        )
        return {
            "ttft": ttft,
            "added_median_ms": {"pd-p": added, "prfaas": added_remote},
            "throughput": load,
            "gateway_cpus": args.gateway_cpus,
        }
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--client":
        done, failed = asyncio.run(_client_load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
        print(json.dumps([done, failed]))
        return 0
    p = argparse.ArgumentParser(description="gateway overhead and capacity, instant workers")
    p.add_argument("--requests", type=int, default=300, help="sequential TTFT samples per case")
    p.add_argument("--duration", type=float, default=10.0, help="throughput phase, seconds")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--clients", type=int, default=2, help="client processes")
    p.add_argument("--gateway-cpus", default="0", help="taskset CPU list for the gateway")
    p.add_argument("--other-cpus", default="1", help="taskset CPU list for workers and clients")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result: dict[str, Any] = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'case':<26}{'median ms':>12}{'p90 ms':>10}")
    for name, row in result["ttft"].items():
        print(f"{name:<26}{row['median_ms']:>12.2f}{row['p90_ms']:>10.2f}")
    added = result["added_median_ms"]
    print(f"added by the gateway (median): pd-p {added['pd-p']:.2f} ms, ", end="")
    print(f"prfaas {added['prfaas']:.2f} ms")
    t = result["throughput"]
    print(
        f"streamed completions/s through the gateway on CPUs {args.gateway_cpus}: "
        f"{t['streams_per_s']:.0f} ({t['completed']} ok, {t['failed']} failed, "
        f"concurrency {t['concurrency']}); gateway CPU {100 * t['gateway_cpu_share']:.0f}%, "
        f"{t['gateway_cpu_ms_per_stream']:.2f} ms per stream"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
