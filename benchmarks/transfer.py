"""KV transfer benchmark: loopback vs memcpy, the link emulator, and (when root) two network
namespaces joined by a veth pair with a `tc tbf` rate cap. One run, one table.

    .venv/bin/python benchmarks/transfer.py [--size-mb 512] [--json results.json]

Each loopback and emulator row is one measured transfer after one warm-up transfer (the
receiver reuses its buffers, as a long-running decode instance does); the receiver always
runs in its own process. On a small shared machine the figures move with the load: compare
rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prfaas.transfer.bench import BLOCK_SHAPE, BenchResult, run_loopback, send_once

TOKENS_PER_TRANSFER = (8 << 20) // (2 * int(np.prod(BLOCK_SHAPE))) * BLOCK_SHAPE[0]  # 4096


@dataclass(frozen=True)
class Row:
    path: str
    codec: str
    connections: int
    tls: bool
    cap_gbps: float | None
    result: BenchResult

    def kv_gbytes_per_s(self) -> float:
        return self.result.kv_rate_gbps / 8

    def tokens_per_s(self) -> float:
        return TOKENS_PER_TRANSFER / self.result.seconds


def memcpy_gbytes_per_s(size_mb: int) -> float:
    src = np.ones(size_mb << 20, np.uint8)
    dst = np.zeros_like(src)
    best_s = min(_timed(lambda: np.copyto(dst, src)) for _ in range(3))
    return (size_mb << 20) / best_s / 1e9


def _timed(fn: object) -> float:
    start_s = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start_s


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "prfaas.transfer.cli", *args]


@contextlib.contextmanager
def _process(cmd: list[str], expect: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        words = child.stdout.readline().split()
        if not words or words[0] != expect:
            raise RuntimeError(f"{cmd} did not start")
        yield child, words
    finally:
        if child.poll() is None:
            child.terminate()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()


def _address(word: str) -> tuple[str, int]:
    host, port = word.rsplit(":", 1)
    return host, int(port)


def through_emulator(size_mb: int, codec: str, cap_gbps: float) -> BenchResult:
    """Receiver process <- emulator process (rate cap) <- this process (paced to the cap)."""
    receiver_cmd = _cli("bench", "transfer", "--listen", "127.0.0.1:0", "--count", "2")
    with _process(receiver_cmd, "listening") as (_, rx_words):
        target = rx_words[1]
        emu_cmd = _cli("link-emulator", "--listen", "127.0.0.1:0", "--connect", target)
        emu_cmd += ["--rate-gbps", str(cap_gbps)]
        with _process(emu_cmd, "relaying") as (_, emu_words):
            address = _address(emu_words[1])
            send_once(address, size_mb, codec, 4, None, cap_gbps, "warm")
            return send_once(address, size_mb, codec, 4, None, cap_gbps, "measured")


NS_SEND, NS_RECV = "prfaas_bench_a", "prfaas_bench_b"
ADDR_SEND, ADDR_RECV = "10.77.0.1", "10.77.0.2"


def netns_available() -> str | None:
    """None when usable, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "no ip/tc"
    probe = subprocess.run(["ip", "netns", "add", "prfaas_probe"], capture_output=True)
    subprocess.run(["ip", "netns", "del", "prfaas_probe"], capture_output=True)
    return None if probe.returncode == 0 else "ip netns refused: " + probe.stderr.decode().strip()


@contextlib.contextmanager
def namespaces(cap_gbps: float) -> Iterator[None]:
    """Two namespaces, one veth pair, tbf on the sender's egress."""
    burst = "8mb" if cap_gbps > 1 else "1mb"
    steps = [
        f"ip netns add {NS_SEND}",
        f"ip netns add {NS_RECV}",
        f"ip link add veth_pf_a netns {NS_SEND} type veth peer name veth_pf_b netns {NS_RECV}",
        f"ip -n {NS_SEND} addr add {ADDR_SEND}/24 dev veth_pf_a",
        f"ip -n {NS_RECV} addr add {ADDR_RECV}/24 dev veth_pf_b",
        f"ip -n {NS_SEND} link set veth_pf_a up",
        f"ip -n {NS_RECV} link set veth_pf_b up",
        f"ip -n {NS_SEND} link set lo up",
        f"ip -n {NS_RECV} link set lo up",
        f"tc -n {NS_SEND} qdisc add dev veth_pf_a root tbf rate {cap_gbps}gbit "
        f"burst {burst} latency 50ms",
    ]
    try:
        for step in steps:
            subprocess.run(step.split(), check=True, capture_output=True)
        yield
    finally:
        for ns in (NS_SEND, NS_RECV):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def through_netns(size_mb: int, codec: str, cap_gbps: float) -> BenchResult:
    with namespaces(cap_gbps):
        listen = ["ip", "netns", "exec", NS_RECV]
        listen += _cli("bench", "transfer", "--listen", f"{ADDR_RECV}:0", "--count", "2")
        with _process(listen, "listening") as (_, words):
            send = ["ip", "netns", "exec", NS_SEND]
            send += _cli("bench", "transfer", "--connect", words[1], "--json")
            send += ["--size-mb", str(size_mb), "--codec", codec, "--connections", "4"]
            send += ["--rate-gbps", str(cap_gbps)]
            subprocess.run(send, check=True, capture_output=True)  # warm-up
            out = subprocess.run(send, check=True, capture_output=True, text=True).stdout
    fields = json.loads(out)
    keep = {k: fields[k] for k in BenchResult.__dataclass_fields__ if k in fields}
    return BenchResult(**keep)


def print_table(rows: list[Row], memcpy_gbps: float) -> None:
    print(f"\nmemcpy of the same bytes: {memcpy_gbps:.2f} GB/s\n")
    head = (
        f"{'path':<22} {'codec':<5} {'conn':>4} {'tls':>4} {'KV GB/s':>8} {'wire Gb/s':>10} "
        f"{'of cap':>7} {'vs memcpy':>9} {'KV tok/s':>9} {'CPU s (tx+rx)':>14}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        r = row.result
        share = f"{r.goodput_gbps / row.cap_gbps:.0%}" if row.cap_gbps else "-"
        cpu = f"{r.cpu_s:.2f}" + (f"+{r.receiver_cpu_s:.2f}" if r.receiver_cpu_s else "")
        print(
            f"{row.path:<22} {row.codec:<5} {row.connections:>4} {'yes' if row.tls else 'no':>4} "
            f"{row.kv_gbytes_per_s():>8.2f} {r.goodput_gbps:>10.2f} {share:>7} "
            f"{row.kv_gbytes_per_s() / memcpy_gbps:>9.2f} {row.tokens_per_s():>9.0f} {cpu:>14}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--capped-size-mb", type=int, default=256, help="per emulated run")
    parser.add_argument("--json", type=Path, default=None, help="also write rows here")
    args = parser.parse_args()

    rows: list[Row] = []
    memcpy = memcpy_gbytes_per_s(args.size_mb)
    for tls in (False, True):
        for connections in (1, 4):
            for codec in ("raw", "int8"):
                result = run_loopback(args.size_mb, codec, connections, tls, None)
                rows.append(Row("loopback", codec, connections, tls, None, result))
                print(f"loopback {codec} x{connections} tls={tls}: {result.describe()}")
    for cap in (1.0, 10.0):
        for codec in ("raw", "int8"):
            result = through_emulator(args.capped_size_mb, codec, cap)
            rows.append(Row(f"emulator {cap:g} Gbit/s", codec, 4, False, cap, result))
            print(f"emulator {cap:g} Gbit/s {codec}: {result.describe()}")
    why_not = netns_available()
    if why_not is None:
        for cap in (1.0, 10.0):
            for codec in ("raw", "int8"):
                result = through_netns(args.capped_size_mb, codec, cap)
                rows.append(Row(f"netns tbf {cap:g} Gbit/s", codec, 4, False, cap, result))
                print(f"netns tbf {cap:g} Gbit/s {codec}: {result.describe()}")
    else:
        print(f"network namespaces skipped: {why_not}")

    print_table(rows, memcpy)
    for path in sorted({row.path for row in rows if row.cap_gbps}):
        by_codec = {row.codec: row for row in rows if row.path == path}
        if {"raw", "int8"} <= by_codec.keys():
            gain = by_codec["int8"].tokens_per_s() / by_codec["raw"].tokens_per_s()
            print(f"{path}: int8 delivers {gain:.2f}x the KV tokens/s of raw")
    if args.json:
        payload = [{"path": r.path, "cap_gbps": r.cap_gbps, **r.result.to_json()} for r in rows] + [
            {"memcpy_gbytes_per_s": memcpy}
        ]
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
