"""`prfaas bench transfer`: one synthetic KV payload through the real sender and receiver.

The payload is fp16 blocks shaped like a GQA layer's KV, (num_blocks, 16 tokens, 8 heads,
128 dims), 8 MiB per layer; values are Gaussian, so lossless stages find little to do (real
KV compresses a little better). Figures: goodput (wire bits/s, 10^9), KV rate (bits of KV
as stored delivered per second) and CPU seconds (sender process; receiver process too when
both ends run here).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prfaas.transfer.codecs import CodecSpec, codec_report
from prfaas.transfer.config import Deadlines, LinkConfig, ReceiverConfig
from prfaas.transfer.errors import TransferError
from prfaas.transfer.link import Link
from prfaas.transfer.messages import DType, LayerEntry, LayerKind, TransferHeader
from prfaas.transfer.receiver import KvReceiver
from prfaas.transfer.sender import Address, KvSender
from prfaas.transfer.tls import (
    PLAINTEXT,
    Plaintext,
    TlsConfig,
    client_context,
    server_context,
    write_certs,
)

logger = logging.getLogger(__name__)

BLOCK_SHAPE = (16, 8, 128)  # tokens per block, KV heads, head_dim
LAYER_BYTES = 8 << 20
FINGERPRINT = b"prfaas-bench"
PROMPT_HASH = bytes(16)  # the transport never interprets it
SENDER_CLUSTER, RECEIVER_CLUSTER = "prfaas", "pd"


@dataclass(frozen=True)
class BenchResult:
    bytes: int  # KV bytes as stored
    wire_bytes: int
    seconds: float
    codec: str
    connections: int
    tls: bool
    rate_gbps: float | None
    cpu_s: float
    receiver_cpu_s: float | None = None
    codec_rel_rms_error: float = 0.0  # of the KV blocks, measured on one layer

    @property
    def goodput_gbps(self) -> float:
        return self.wire_bytes * 8 / self.seconds / 1e9

    @property
    def kv_rate_gbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e9

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        out |= {"goodput_gbps": self.goodput_gbps, "kv_rate_gbps": self.kv_rate_gbps}
        out["ratio"] = self.bytes / self.wire_bytes
        return out

    def describe(self) -> str:
        rx = "" if self.receiver_cpu_s is None else f" + receiver {self.receiver_cpu_s:.2f}s"
        return (
            f"{self.bytes / 2**20:.0f} MiB {self.codec} over {self.connections} conn"
            f"{' TLS' if self.tls else ''}: goodput {self.goodput_gbps:.2f} Gbit/s, "
            f"KV rate {self.kv_rate_gbps:.2f} Gbit/s ({self.kv_rate_gbps / 8:.2f} GB/s), "
            f"{self.seconds:.2f}s, CPU sender {self.cpu_s:.2f}s{rx}, "
            f"codec error {self.codec_rel_rms_error:.2%} rms"
        )


def make_payload(
    size_mb: int, request_id: str, codec: str
) -> tuple[TransferHeader, list[np.ndarray]]:
    """``size_mb`` MiB of fp16 KV in 8 MiB layers (4 distinct arrays, reused)."""
    num_layers = max(1, (size_mb << 20) // LAYER_BYTES)
    blocks = LAYER_BYTES // (2 * int(np.prod(BLOCK_SHAPE)))
    rng = np.random.default_rng(0)
    distinct = [
        rng.standard_normal((blocks, *BLOCK_SHAPE), dtype=np.float32).astype(np.float16)
        for _ in range(min(4, num_layers))
    ]
    layers = [distinct[i % len(distinct)] for i in range(num_layers)]
    entries = tuple(
        LayerEntry(f"layer.{i}", LayerKind.BLOCKS, DType.FLOAT16, a.shape)
        for i, a in enumerate(layers)
    )
    return TransferHeader(request_id, FINGERPRINT, codec, entries, PROMPT_HASH), layers


def send_once(
    address: Address,
    size_mb: int,
    codec: str,
    connections: int,
    certs_dir: Path | None,
    rate_gbps: float | None,
    request_id: str = "bench-0",
) -> BenchResult:
    link = Link(LinkConfig("bench", rate_gbps=rate_gbps, connections=connections, codec=codec))
    tls: ssl.SSLContext | Plaintext = PLAINTEXT  # --tls or not: the bench user said so
    if certs_dir is not None:
        tls = client_context(TlsConfig.from_dir(certs_dir, SENDER_CLUSTER))
    sender = KvSender(link, tls=tls, server_name=RECEIVER_CLUSTER, deadlines=Deadlines())
    header, layers = make_payload(size_mb, request_id, codec)
    report = codec_report(layers[0][:64], DType.FLOAT16, CodecSpec.parse(codec))
    cpu0 = time.process_time()
    stats = sender.send(address, header, layers)
    return BenchResult(
        bytes=stats.raw_bytes,
        wire_bytes=stats.wire_bytes,
        seconds=stats.seconds,
        codec=codec,
        connections=connections,
        tls=certs_dir is not None,
        rate_gbps=rate_gbps,
        cpu_s=time.process_time() - cpu0,
        codec_rel_rms_error=report.rel_rms_error,
    )


class _Reporter:
    """Listener for the serving side: releases each completed transfer and reports it."""

    def __init__(self, receiver_ref: list[KvReceiver], as_json: bool) -> None:
        self.receiver_ref, self.as_json = receiver_ref, as_json
        self.done = threading.Semaphore(0)
        self._cpu_s = time.process_time()

    def on_layer(self, request_id: str, layer: int) -> None:
        pass

    def on_complete(self, request_id: str) -> None:
        now = time.process_time()
        cpu_s, self._cpu_s = now - self._cpu_s, now
        self.receiver_ref[0].release(request_id)
        if self.as_json:
            print(json.dumps({"request_id": request_id, "receiver_cpu_s": cpu_s}), flush=True)
        else:
            print(f"received {request_id}, receiver CPU {cpu_s:.2f}s", flush=True)
        self.done.release()

    def on_failed(self, request_id: str, error: TransferError) -> None:
        print(f"failed {request_id}: {error!r}", file=sys.stderr, flush=True)
        self.done.release()


def serve(host: str, port: int, certs_dir: Path | None, count: int | None, as_json: bool) -> int:
    """Receive transfers until ``count`` ended (forever if None). Prints the address first."""
    tls: ssl.SSLContext | Plaintext = PLAINTEXT
    if certs_dir is not None:
        tls = server_context(TlsConfig.from_dir(certs_dir, RECEIVER_CLUSTER))
    ref: list[KvReceiver] = []
    reporter = _Reporter(ref, as_json)
    with KvReceiver(ReceiverConfig(host=host, port=port), tls=tls, listener=reporter) as rx:
        ref.append(rx)
        print(f"listening {rx.address[0]}:{rx.address[1]}", flush=True)
        done = 0
        while count is None or done < count:
            reporter.done.acquire()
            done += 1
    return 0


def run_loopback(
    size_mb: int,
    codec: str,
    connections: int,
    tls: bool,
    rate_gbps: float | None,
    warmup: int = 1,
) -> BenchResult:
    """Both ends on 127.0.0.1, the receiver in its own process (as in production: separate
    interpreters). ``warmup`` transfers run first (receive buffers come from the pool)."""
    with tempfile.TemporaryDirectory() as tmp:
        certs_dir = None
        if tls:
            certs_dir = Path(tmp)
            write_certs(certs_dir, [SENDER_CLUSTER, RECEIVER_CLUSTER])
        cmd = [sys.executable, "-m", "prfaas.transfer.cli", "bench", "transfer", "--json"]
        cmd += ["--listen", "127.0.0.1:0", "--count", str(warmup + 1)]
        cmd += ["--certs", str(certs_dir)] if certs_dir else []
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
        try:
            assert child.stdout is not None
            first = child.stdout.readline().split()
            if not first or first[0] != "listening":
                raise RuntimeError("bench receiver did not start")
            host, port = first[1].rsplit(":", 1)
            address = (host, int(port))
            for i in range(warmup):
                send_once(address, size_mb, codec, connections, certs_dir, rate_gbps, f"w{i}")
                child.stdout.readline()
            result = send_once(address, size_mb, codec, connections, certs_dir, rate_gbps)
            report = json.loads(child.stdout.readline())
            child.wait(30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()
    return BenchResult(**(asdict(result) | {"receiver_cpu_s": report["receiver_cpu_s"]}))
