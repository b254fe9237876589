"""Mutation fuzz of everything a peer can send: KV frames and worker registration/heartbeats.

    PYTHONPATH=src .venv/bin/python benchmarks/fuzz_wire.py [--inputs 1000000] [--seed 0] [--json]

Mutation-based from valid seeds (atheris is not a dependency): every seed is a real encoded
frame stream (HELLO, AUTH, HEADER, READY, CHUNK, END, TRAILER, ACK, ERROR) or a real
control-plane message (WorkerInfo, Heartbeat, RoleSwitch, KvFailed as JSON). Each input is a
seed after 1-4 mutations: bit flips, interesting integers (0, -1, 2^k±1, bounds) written at
random offsets, insertions, deletions, duplicated ranges, splices with another seed,
truncation; frames then get their CRCs fixed half of the time (so a mutation reaches the
payload decoders instead of dying at the checksum), and JSON seeds get whole fields replaced
by hostile values (huge numbers, deep lists, long strings, wrong types).

Targets: the frame stream parser (``read_control_frame`` over an in-memory socket, then the
message decoder of each frame's type), ``AuthVerifier.verify``, and the pydantic decoders of
the gateway's /internal endpoints. Passing means: only the typed refusals (TransferError,
pydantic ValidationError) are ever raised, and tracemalloc's peak stays under a fixed bound
(nothing allocates from a length field it has not checked). Prints inputs/s.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import ValidationError

from prfaas.messages import CacheEventMsg, Heartbeat, KvFailed, RoleSwitch, WorkerInfo
from prfaas.transfer.auth import AuthProof, AuthVerifier, kv_auth_key
from prfaas.transfer.errors import TransferError
from prfaas.transfer.messages import (
    Ack,
    ChunkMeta,
    DType,
    End,
    ErrorMessage,
    Hello,
    LayerEntry,
    LayerKind,
    Ready,
    Trailer,
    TransferHeader,
)
from prfaas.transfer.wire import (
    FRAME_HEADER_BYTES,
    FrameType,
    frame_bytes,
    read_frame_header,
    read_payload,
    recv_exact_into,
)

MAX_INPUT_BYTES = 64 << 10  # mutated inputs are cut here
PEAK_BOUND_BYTES = 4 << 20  # per traced batch: one 1 MiB control frame + slack
TRACED_BATCH, TRACE_EVERY = 5000, 4
KEY = kv_auth_key("fuzz-token")
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000, 2**31 - 1, 2**31]
INTERESTING += [2**32 - 1, 2**40, 2**63 - 1, 2**64 - 1, 4096, 4097, 1 << 20, (1 << 20) + 1]
HOSTILE_JSON: list[Any] = [None, True, -1, 0, 2**63, 10**40, 1e308, -1e308, "", "x" * 5000]
HOSTILE_JSON += [[], [[[[[]]]]], {"a": {"b": {}}}, "ä\u0000\ud7ff", list(range(300)), 0.5]


class MemorySocket:
    """Just enough of a socket for the frame readers: recv_into from a byte string."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = memoryview(data), 0

    def recv_into(self, view: memoryview, n: int) -> int:
        take = self._data[self._pos : self._pos + min(n, len(view))]
        view[: len(take)] = take
        self._pos += len(take)
        return len(take)


DECODERS: dict[FrameType, Callable[[bytes], object]] = {
    FrameType.HELLO: Hello.decode,
    FrameType.HEADER: TransferHeader.decode,
    FrameType.READY: Ready.decode,
    FrameType.END: End.decode,
    FrameType.TRAILER: Trailer.decode,
    FrameType.ACK: Ack.decode,
    FrameType.ERROR: ErrorMessage.decode,
    FrameType.AUTH: AuthProof.decode,
}
JSON_DECODERS: dict[str, Callable[[bytes], object]] = {
    "WorkerInfo": WorkerInfo.decode,
    "Heartbeat": Heartbeat.decode,
    "RoleSwitch": RoleSwitch.decode,
    "KvFailed": KvFailed.decode,
}


def parse_frames(data: bytes) -> None:
    """Read and decode frames until the stream ends (PeerGone) or one is refused. A CHUNK's
    payload is never read whole: as in ChunkReader, its 16-byte meta comes first and the
    data lands in a buffer the HEADER admitted (not modelled here), so the stream stops."""
    sock = cast(socket.socket, MemorySocket(data))
    while True:
        header = read_frame_header(sock)
        if header.frame_type == FrameType.CHUNK:
            meta = bytearray(min(16, header.length))
            recv_exact_into(sock, memoryview(meta))
            ChunkMeta.decode(bytes(meta))
            return
        DECODERS[header.frame_type](read_payload(sock, header))


def frame_seeds() -> list[bytes]:
    header = TransferHeader(
        "cmpl-0123",
        bytes(16),
        "int8+zstd",
        (
            LayerEntry("L0.k", LayerKind.BLOCKS, DType.BFLOAT16, (64, 16, 2, 64)),
            LayerEntry("L0.recurrent", LayerKind.STATE, DType.FLOAT32, (1, 4, 32, 32)),
            LayerEntry("first_token", LayerKind.STATE, DType.INT64, (1,)),
        ),
        bytes(range(16)),
    )
    hello = Hello("cmpl-0123", 0, 2, 0, False)
    auth = AuthProof.prove(KEY, hello.encode())
    chunk_meta = ChunkMeta(0, 0, 4, 0, 0).encode()
    return [
        frame_bytes(FrameType.HELLO, hello.encode())
        + frame_bytes(FrameType.AUTH, auth.encode())
        + frame_bytes(FrameType.HEADER, header.encode()),
        frame_bytes(FrameType.READY, Ready(3, frozenset({1})).encode()),
        frame_bytes(FrameType.END, End(7).encode())
        + frame_bytes(FrameType.TRAILER, Trailer(7, bytes(32)).encode())
        + frame_bytes(FrameType.ACK, Ack(7).encode()),
        frame_bytes(FrameType.ERROR, ErrorMessage(3, "wrong model").encode()),
        frame_bytes(FrameType.CHUNK, chunk_meta + bytes(64)),
    ]


def json_seeds() -> list[tuple[str, bytes]]:
    info = WorkerInfo(
        name="pd-d-0",
        cluster="local",
        role="decode",
        http_url="http://127.0.0.1:9000",
        kv_host="127.0.0.1",
        kv_port=9001,
        fingerprint="ab" * 16,
        model_name="/models/tiny",
        max_model_len=512,
        block_size=16,
        epoch=12345,
    )
    events = [CacheEventMsg(block_hash=f"{i:032x}", stored=i % 2 == 0) for i in range(3)]
    heartbeat = Heartbeat(
        name="pd-d-0",
        epoch=12345,
        role="decode",
        num_waiting=1,
        num_running=2,
        kv_usage=0.5,
        fallbacks=0,
        seq=1,
        events=events,
    )
    return [
        ("WorkerInfo", info.encode()),
        ("Heartbeat", heartbeat.encode()),
        ("RoleSwitch", RoleSwitch(role="prefill", name="pd-p-0").encode()),
        ("KvFailed", KvFailed(request_id="cmpl-1", reason="cut").encode()),
    ]


def mutate_bytes(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    out = bytearray(data)
    r = rng.random  # int(r() * n) in [0, n): several times faster than randrange
    for _ in range(1 + int(r() * 4)):
        op, n = int(r() * 7), len(out)
        at = int(r() * (n + 1))
        if op == 0 and n:  # flip a bit
            out[int(r() * n)] ^= 1 << int(r() * 8)
        elif op == 1 and n:  # a random byte
            out[int(r() * n)] = int(r() * 256)
        elif op == 2:  # an interesting integer, 1/2/4/8 bytes little-endian
            size = (1, 2, 4, 8)[int(r() * 4)]
            value = INTERESTING[int(r() * len(INTERESTING))] & ((1 << (8 * size)) - 1)
            out[at : at + size] = value.to_bytes(size, "little")
        elif op == 3:  # insert random bytes
            out[at:at] = rng.randbytes(1 + int(r() * 16))
        elif op == 4 and n:  # delete a range
            del out[at : at + 1 + int(r() * 16)]
        elif op == 5 and n:  # duplicate a range
            start = int(r() * n)
            out[at:at] = out[start : start + 1 + int(r() * 64)]
        else:  # splice with another seed, or truncate
            other = pool[int(r() * len(pool))]
            cut = int(r() * (len(other) + 1))
            out = out[:at] + bytearray(other[cut:]) if r() < 0.5 else out[:at]
    return bytes(out[:MAX_INPUT_BYTES])


def fix_crcs(data: bytes) -> bytes:
    """Recompute header and payload CRCs of every frame whose bounds still parse, so that the
    mutation reaches the payload decoders."""
    out = bytearray(data)
    pos = 0
    while pos + FRAME_HEADER_BYTES <= len(out):
        type_code, length = struct.unpack_from("<5xB2xI", out, pos)
        end = pos + FRAME_HEADER_BYTES + length
        if type_code != FrameType.CHUNK and end <= len(out):
            payload_crc = zlib.crc32(out[pos + FRAME_HEADER_BYTES : end])
            struct.pack_into("<I", out, pos + 12, payload_crc)
        struct.pack_into("<I", out, pos + 16, zlib.crc32(out[pos : pos + 16]))
        if end > len(out) or length > MAX_INPUT_BYTES:
            break
        pos = end + (16 if type_code == FrameType.CHUNK else 0)
    return bytes(out)


def mutate_json(rng: random.Random, data: bytes) -> bytes:
    obj = json.loads(data)
    for _ in range(rng.randint(1, 3)):
        keys = list(obj)
        choice = rng.random()
        if choice < 0.6 and keys:
            obj[rng.choice(keys)] = rng.choice(HOSTILE_JSON)
        elif choice < 0.8 and keys:
            del obj[rng.choice(keys)]
        else:
            obj[rng.choice(["extra", "__class__", "events", "epoch"])] = rng.choice(HOSTILE_JSON)
    return json.dumps(obj).encode()


@dataclass
class FuzzReport:
    inputs: int = 0
    seconds: float = 0.0
    peak_bytes: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # accepted / refusal type

    @property
    def inputs_per_s(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


class FuzzCrash(AssertionError):
    """A target raised something other than a typed refusal; ``data`` reproduces it."""

    def __init__(self, target: str, data: bytes, error: BaseException) -> None:
        super().__init__(f"{target} crashed with {error!r} on {data[:200]!r}")
        self.data = data


def run(
    num_inputs: int,
    seed: int = 0,
    max_seconds: float | None = None,
    track_memory: bool = True,
) -> FuzzReport:
    """Fuzz until ``num_inputs`` inputs (or ``max_seconds``); raise FuzzCrash on a crash and
    AssertionError if the allocation peak exceeds PEAK_BOUND_BYTES. With ``track_memory``,
    one batch of ``TRACED_BATCH`` inputs in ``TRACE_EVERY`` runs under tracemalloc (tracing
    every allocation costs ~3x; a quarter of the inputs is plenty to catch a decoder that
    allocates from an unchecked length)."""
    rng = random.Random(seed)
    frames, jsons = frame_seeds(), json_seeds()
    pool = frames + [data for _, data in jsons]
    hello_payload = Hello("cmpl-0123", 0, 2, 0, False).encode()
    verifier = AuthVerifier(KEY)
    report = FuzzReport()
    started = time.perf_counter()
    try:
        while report.inputs < num_inputs:
            if report.inputs % TRACED_BATCH == 0:
                if max_seconds is not None and time.perf_counter() - started > max_seconds:
                    break
                batch = report.inputs // TRACED_BATCH
                if tracemalloc.is_tracing():
                    report.peak_bytes = max(report.peak_bytes, tracemalloc.get_traced_memory()[1])
                    tracemalloc.stop()
                if track_memory and batch % TRACE_EVERY == 0:
                    tracemalloc.start()
            kind = rng.random()
            if kind < 0.6:
                target, data = "frames", mutate_bytes(rng, rng.choice(frames), pool)
                if rng.random() < 0.5:
                    data = fix_crcs(data)
                call: Callable[[bytes], object] = parse_frames
            elif kind < 0.7:
                target = "auth"
                proof = AuthProof.prove(KEY, hello_payload).encode()
                data = mutate_bytes(rng, proof, pool)[:64]

                def call(d: bytes) -> object:
                    verifier.verify(hello_payload, d)
                    return None
            else:
                target, seed_bytes = rng.choice(jsons)
                data = (
                    mutate_json(rng, seed_bytes)
                    if rng.random() < 0.6
                    else mutate_bytes(rng, seed_bytes, pool)
                )
                call = JSON_DECODERS[target]
            try:
                call(data)
                report.outcomes[f"{target}: accepted"] += 1
            except (TransferError, ValidationError) as exc:
                report.outcomes[f"{target}: {type(exc).__name__}"] += 1
            except Exception as exc:
                raise FuzzCrash(target, data, exc) from exc
            report.inputs += 1
    finally:
        report.seconds = time.perf_counter() - started
        if tracemalloc.is_tracing():
            report.peak_bytes = max(report.peak_bytes, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    if track_memory and report.peak_bytes > PEAK_BOUND_BYTES:
        raise AssertionError(f"allocation peak {report.peak_bytes} B > {PEAK_BOUND_BYTES} B")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-tracemalloc", action="store_true", help="faster, no peak bound")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run(args.inputs, args.seed, track_memory=not args.no_tracemalloc)
    summary = {
        "inputs": report.inputs,
        "seconds": round(report.seconds, 2),
        "inputs_per_s": round(report.inputs_per_s),
        "peak_bytes": report.peak_bytes,
        "outcomes": dict(sorted(report.outcomes.items())),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"{report.inputs} inputs in {report.seconds:.1f} s ({report.inputs_per_s:,.0f}/s), "
        f"no crash; tracemalloc peak {report.peak_bytes / 2**20:.2f} MiB"
    )
    for outcome, count in sorted(report.outcomes.items()):
        print(f"  {outcome:<40} {count:>9}")


if __name__ == "__main__":
    main()
