"""A live receiver fed mutated KV streams: whatever the mutation, either the transfer lands
exactly what was sent, or it fails and the receiver holds nothing. Nothing is ever imported
from a bad stream (the checksums, digest, bounds and AUTH see to it)."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prfaas.transfer.auth import AuthProof, kv_auth_key
from prfaas.transfer.chunks import ChunkJob, Record, write_chunk
from prfaas.transfer.codecs import CodecSpec
from prfaas.transfer.config import Deadlines, ReceiverConfig
from prfaas.transfer.errors import TransferError
from prfaas.transfer.messages import (
    DType,
    End,
    Hello,
    LayerEntry,
    LayerKind,
    Trailer,
    TransferHeader,
    chunk_digest,
)
from prfaas.transfer.receiver import KvReceiver
from prfaas.transfer.tls import PLAINTEXT
from prfaas.transfer.wire import FrameType, frame_bytes

KEY = kv_auth_key("fuzz-cluster-token")
FINGERPRINT = b"model-v1"
QUICK = Deadlines(first_byte_s=0.5, stall_s=0.3, total_s=1.5)
_ids = itertools.count()


@pytest.fixture(scope="module")
def receiver() -> Iterator[KvReceiver]:
    config = ReceiverConfig(
        fingerprint=FINGERPRINT, deadlines=QUICK, resume_window_s=0, auth_key=KEY
    )
    with KvReceiver(config, tls=PLAINTEXT) as rx:
        yield rx


def valid_stream(request_id: str) -> tuple[bytes, list[np.ndarray]]:
    """One connection's whole conversation, sender side: HELLO, AUTH, HEADER, CHUNKs (two
    per BLOCKS layer), END, TRAILER."""
    rng = np.random.default_rng(0)
    kv = [rng.standard_normal((4, 2, 2, 4)).astype(np.float16) for _ in range(2)]
    state = rng.standard_normal((1, 3, 4)).astype(np.float32)
    arrays = [*kv, state]
    layers = tuple(
        LayerEntry(f"full.{i}", LayerKind.BLOCKS, DType.FLOAT16, a.shape) for i, a in enumerate(kv)
    ) + (LayerEntry("linear.0", LayerKind.STATE, DType.FLOAT32, state.shape),)
    header = TransferHeader(request_id, FINGERPRINT, "raw", layers, bytes(range(16)))
    hello = Hello(request_id, 0, 1, 0, False).encode()
    out = bytearray(frame_bytes(FrameType.HELLO, hello))
    out += frame_bytes(FrameType.AUTH, AuthProof.prove(KEY, hello).encode())
    out += frame_bytes(FrameType.HEADER, header.encode())

    def send(data: bytes | memoryview, check: Poly1305 | None) -> None:
        if check is not None:
            check.update(data)
        out.extend(data)

    records: list[Record] = []
    for index, (entry, array) in enumerate(zip(layers, arrays, strict=True)):
        step = max(1, array.shape[0] // 2)
        for start in range(0, array.shape[0], step):
            job = ChunkJob(index, start, min(start + step, array.shape[0]), array[start:][:step])
            records.append(write_chunk(send, job, entry, CodecSpec.parse("raw")))
    out += frame_bytes(FrameType.END, End(len(records)).encode())
    out += frame_bytes(FrameType.TRAILER, Trailer(len(records), chunk_digest(records)).encode())
    return bytes(out), arrays


def converse(rx: KvReceiver, stream: bytes) -> None:
    with socket.create_connection(rx.address, timeout=3.0) as sock:
        try:
            sock.sendall(stream)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        except OSError:
            pass  # the receiver refused and closed while we were still sending


def settle(rx: KvReceiver, request_id: str) -> list[np.ndarray] | None:
    """The landed layers if the transfer completed; None once the receiver holds nothing."""
    end_s = time.monotonic() + QUICK.total_s + 2.0
    while time.monotonic() < end_s:
        try:
            got = rx.wait(request_id, 0.05)
        except TransferError:
            if rx.num_transfers == 0 and rx.allocated_bytes == 0:
                return None
            continue
        layers = [layer.copy() for layer in got.layers]
        rx.release(request_id)
        return layers
    raise AssertionError(f"{request_id}: receiver still holds {rx.allocated_bytes} bytes")


def test_the_valid_stream_lands(receiver: KvReceiver) -> None:
    request_id = f"fuzz-{next(_ids):06d}"
    stream, arrays = valid_stream(request_id)
    converse(receiver, stream)
    landed = settle(receiver, request_id)
    assert landed is not None
    assert all(np.array_equal(a, b) for a, b in zip(landed, arrays, strict=True))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_a_mutated_stream_lands_exactly_or_not_at_all(
    receiver: KvReceiver, data: st.DataObject
) -> None:
    request_id = f"fuzz-{next(_ids):06d}"
    stream, arrays = valid_stream(request_id)
    mutated = bytearray(stream)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, 1 << 20)) % len(mutated)  # stable across examples
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if kind == "flip":
            mutated[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            mutated = mutated[:at]
        elif kind == "insert":
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del mutated[at : at + data.draw(st.integers(1, 8))]
        if not mutated:
            break
    converse(receiver, bytes(mutated))
    landed = settle(receiver, request_id)
    if landed is not None:  # only a harmless mutation may land, and then exactly
        assert all(np.array_equal(a, b) for a, b in zip(landed, arrays, strict=True))
    assert receiver.num_transfers == 0 and receiver.allocated_bytes == 0
