"""Failures: refused streams, dead or stalled senders, cuts and resume. After each one the
receiver holds nothing (allocated_bytes == 0) and the error is typed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from prfaas.transfer.config import Deadlines
from prfaas.transfer.emulator import EmulatorConfig, LinkEmulator
from prfaas.transfer.errors import (
    CorruptFrame,
    ErrorCode,
    PeerGone,
    TransferError,
    TransferTimeout,
)
from prfaas.transfer.messages import ChunkMeta, ErrorMessage, Hello, Ready, TransferHeader
from prfaas.transfer.receiver import KvReceiver
from prfaas.transfer.wire import (
    FRAME_HEADER_BYTES,
    FrameHeader,
    FrameType,
    chunk_checksum,
    frame_bytes,
    read_control_frame,
)

from .conftest import make_payload, make_sender


def _wait_until(predicate: object, timeout_s: float = 5.0) -> None:
    end_s = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < end_s, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def raw_client(receiver: KvReceiver) -> Iterator[tuple[socket.socket, TransferHeader]]:
    """A hand-driven sender, one connection, after HELLO/HEADER/READY."""
    header, _ = make_payload(num_full=2, num_blocks=4, num_linear=0)
    sock = socket.create_connection(receiver.address, timeout=5)
    sock.sendall(frame_bytes(FrameType.HELLO, Hello(header.request_id, 0, 1, 0, False).encode()))
    sock.sendall(frame_bytes(FrameType.HEADER, header.encode()))
    frame_type, payload = read_control_frame(sock, FrameType.READY)
    assert frame_type == FrameType.READY and Ready.decode(payload).complete_layers == set()
    assert receiver.allocated_bytes == header.raw_bytes
    yield sock, header
    sock.close()


def _chunk(header: TransferHeader, layer: int, start: int, end: int, corrupt: bool) -> bytes:
    rows = header.layers[layer].row_bytes * (end - start)
    data = bytes(rows)
    meta = ChunkMeta(layer, start, end, 0, 0).encode()
    check = chunk_checksum()
    check.update(meta + data)
    tag = bytearray(check.finalize())
    if corrupt:
        tag[0] ^= 1
    head = FrameHeader(FrameType.CHUNK, len(meta) + len(data), 0).encode()
    return head + meta + data + bytes(tag)


def _assert_refused(receiver: KvReceiver, header: TransferHeader, error: type) -> None:
    with pytest.raises(error):
        receiver.wait(header.request_id, timeout_s=3)
    assert receiver.allocated_bytes == 0 and receiver.num_transfers == 0


def test_corrupted_chunk_is_refused_and_freed(receiver: KvReceiver, raw_client: tuple) -> None:
    sock, header = raw_client
    sock.sendall(_chunk(header, 0, 0, 2, corrupt=True))
    _assert_refused(receiver, header, CorruptFrame)
    frame_type, payload = read_control_frame(sock, FrameType.ACK)  # the sender learns why
    assert frame_type == FrameType.ERROR
    assert ErrorMessage.decode(payload).code == ErrorCode.CORRUPT_FRAME


def test_duplicate_blocks_are_refused(receiver: KvReceiver, raw_client: tuple) -> None:
    sock, header = raw_client
    sock.sendall(_chunk(header, 0, 0, 2, corrupt=False) + _chunk(header, 0, 1, 3, corrupt=False))
    _assert_refused(receiver, header, CorruptFrame)


def test_oversized_frame_is_refused_before_reading(receiver: KvReceiver, raw_client: tuple) -> None:
    sock, header = raw_client
    head = bytearray(FrameHeader(FrameType.END, 8, 0).encode())
    head[8:12] = (1 << 30).to_bytes(4, "little")  # length field: 1 GiB control frame
    head[16:20] = zlib.crc32(bytes(head[:16])).to_bytes(4, "little")
    sock.sendall(bytes(head))
    _assert_refused(receiver, header, CorruptFrame)


def test_truncated_stream_frees_after_the_resume_window(
    receiver: KvReceiver, raw_client: tuple
) -> None:
    sock, header = raw_client
    sock.sendall(_chunk(header, 0, 0, 2, corrupt=False)[:-100])
    sock.close()
    _assert_refused(receiver, header, PeerGone)  # parked 0.5 s, then freed


def test_wrong_version_is_refused_with_nothing_allocated(receiver: KvReceiver) -> None:
    hello = bytearray(frame_bytes(FrameType.HELLO, Hello("r", 0, 1, 0, False).encode()))
    hello[4] = 9  # version; the header CRC no longer matches either way
    with socket.create_connection(receiver.address, timeout=5) as sock:
        sock.sendall(bytes(hello))
        frame_type, payload = read_control_frame(sock, FrameType.READY)
        assert frame_type == FrameType.ERROR
        assert ErrorMessage.decode(payload).code == ErrorCode.CORRUPT_FRAME
    assert receiver.num_transfers == 0 and receiver.allocated_bytes == 0


def test_garbage_instead_of_a_frame(receiver: KvReceiver) -> None:
    with socket.create_connection(receiver.address, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(FRAME_HEADER_BYTES))
        frame_type, _ = read_control_frame(sock, FrameType.READY)
        assert frame_type == FrameType.ERROR
    assert receiver.num_transfers == 0


SENDER_SCRIPT = textwrap.dedent(
    """
    import sys
    from tests.transfer.conftest import make_payload, make_sender
    header, arrays = make_payload(num_full=8, num_blocks=64)
    sender = make_sender(connections=2, rate_gbps=0.01)  # ~1.25 MB/s: minutes to finish
    transfer = sender.open(("127.0.0.1", int(sys.argv[1])), header)
    for i, a in enumerate(arrays):
        transfer.send_layer(i, a)
    print("sending", flush=True)
    transfer.finish()
    """
)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_dead_sender_is_detected_and_everything_freed(receiver: KvReceiver, how: int) -> None:
    """Killed: the kernel closes its sockets (PeerGone). Frozen: nothing arrives and the
    stall deadline fires (TransferTimeout). Either way the receiver parks for the resume
    window, then frees everything."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    child = subprocess.Popen(
        [sys.executable, "-c", SENDER_SCRIPT, str(receiver.address[1])],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "sending"
        _wait_until(lambda: receiver.allocated_bytes > 0)
        child.send_signal(how)
        header, _ = make_payload(num_full=8, num_blocks=64)
        start_s = time.monotonic()
        with pytest.raises(PeerGone if how == signal.SIGKILL else TransferTimeout):
            receiver.wait(header.request_id, timeout_s=5)
        assert time.monotonic() - start_s < 4.0  # stall 1 s + resume window 0.5 s + slack
        assert receiver.allocated_bytes == 0 and receiver.num_transfers == 0
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_resume_after_a_cut_skips_complete_layers(receiver: KvReceiver) -> None:
    header, arrays = make_payload(num_full=8, num_blocks=64)
    cut_after = header.raw_bytes // 2
    config = EmulatorConfig(("127.0.0.1", 0), receiver.address, cut_after_bytes=cut_after)
    with LinkEmulator(config) as emulator:
        sender = make_sender(connections=2, rate_gbps=0.5)  # the cut lands mid-stream
        with pytest.raises(PeerGone):
            sender.send(emulator.address, header, arrays)
        _wait_until(lambda: receiver.num_transfers == 1)
        parked = receiver.allocated_bytes
        assert parked == header.raw_bytes  # complete layers kept for the resume
        stats = sender.send(emulator.address, header, arrays, retries=0, attempt_from=1)
    assert stats.layers_skipped > 0
    assert stats.raw_bytes < header.raw_bytes
    got = receiver.wait(header.request_id, 5)
    assert all(np.array_equal(g, a) for g, a in zip(got.layers, arrays, strict=True))
    receiver.release(header.request_id)
    assert receiver.allocated_bytes == 0


def test_send_with_retries_resumes_by_itself(receiver: KvReceiver) -> None:
    header, arrays = make_payload(num_full=8, num_blocks=64)
    config = EmulatorConfig(
        ("127.0.0.1", 0), receiver.address, cut_after_bytes=header.raw_bytes // 3
    )
    with LinkEmulator(config) as emulator:
        stats = make_sender(connections=2, rate_gbps=0.5).send(
            emulator.address, header, arrays, retries=2
        )
    assert stats.layers_skipped > 0
    got = receiver.wait(header.request_id, 5)
    assert all(np.array_equal(g, a) for g, a in zip(got.layers, arrays, strict=True))
    receiver.release(header.request_id)


def test_stalled_link_fires_deadlines_on_both_sides(receiver: KvReceiver) -> None:
    header, arrays = make_payload(num_full=8, num_blocks=64)
    config = EmulatorConfig(("127.0.0.1", 0), receiver.address, stalls=((0.1, 3.0),))
    with LinkEmulator(config) as emulator:
        deadlines = Deadlines(first_byte_s=1.0, stall_s=1.0, total_s=2.0)
        sender = make_sender(rate_gbps=0.1, deadlines=deadlines)  # still sending at 0.1 s
        start_s = time.monotonic()
        with pytest.raises(TransferError):
            sender.send(emulator.address, header, arrays)
        assert time.monotonic() - start_s < 4.0  # total deadline 2 s + slack
        with pytest.raises(TransferTimeout):  # the receiver's stall deadline
            receiver.wait(header.request_id, timeout_s=3)
    assert receiver.allocated_bytes == 0 and receiver.num_transfers == 0
