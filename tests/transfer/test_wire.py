"""Frames and messages: round trips, refusals, and a property-based fuzz of the parser."""

from __future__ import annotations

import contextlib
import socket
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas.transfer.errors import CorruptFrame, TransferError
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
    chunk_digest,
)
from prfaas.transfer.wire import (
    FRAME_HEADER_BYTES,
    MAX_CHUNK_FRAME_BYTES,
    VERSION,
    FrameHeader,
    FrameType,
    frame_bytes,
    read_control_frame,
)

HEADER = TransferHeader(
    "req-7",
    b"\x01fingerprint",
    "int8+zstd",
    (
        LayerEntry("full.0", LayerKind.BLOCKS, DType.FLOAT16, (10, 2, 16, 8, 128)),
        LayerEntry("linear.0", LayerKind.STATE, DType.BFLOAT16, (1, 32, 128, 128)),
    ),
    bytes(range(16)),
)
MESSAGES = [
    Hello("req-7", 2, 4, 1, True),
    HEADER,
    Ready(11, frozenset({0, 3, 10})),
    ChunkMeta(1, 4, 9, 1, 2),
    End(17),
    Trailer(17, bytes(range(32))),
    Ack(17),
    ErrorMessage(3, "wrong model"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_round_trip(message: object) -> None:
    encoded = message.encode()  # type: ignore[attr-defined]
    assert type(message).decode(encoded) == message  # type: ignore[attr-defined]


@pytest.mark.parametrize("message", MESSAGES[:4] + MESSAGES[5:7], ids=lambda m: type(m).__name__)
def test_truncated_or_padded_messages_are_refused(message: object) -> None:
    encoded = message.encode()  # type: ignore[attr-defined]
    with pytest.raises(CorruptFrame):
        type(message).decode(encoded[:-1])  # type: ignore[attr-defined]
    with pytest.raises(CorruptFrame):
        type(message).decode(encoded + b"\0")  # type: ignore[attr-defined]


def test_header_totals_must_agree() -> None:
    encoded = bytearray(HEADER.encode())
    encoded[-8:] = (HEADER.raw_bytes + 1).to_bytes(8, "little")
    with pytest.raises(CorruptFrame, match="disagrees"):
        TransferHeader.decode(bytes(encoded))


def test_frame_header_round_trip_and_refusals() -> None:
    header = FrameHeader(FrameType.HEADER, 123, 456)
    encoded = header.encode()
    assert len(encoded) == FRAME_HEADER_BYTES
    assert FrameHeader.decode(encoded) == header

    wrong_version = bytearray(encoded)
    wrong_version[4] = VERSION + 1
    wrong_version[16:20] = zlib.crc32(bytes(wrong_version[:16])).to_bytes(4, "little")
    with pytest.raises(CorruptFrame, match="version"):
        FrameHeader.decode(wrong_version)

    oversized = FrameHeader(FrameType.CHUNK, MAX_CHUNK_FRAME_BYTES + 1, 0).encode()
    with pytest.raises(CorruptFrame, match="exceeds"):
        FrameHeader.decode(oversized)

    with pytest.raises(CorruptFrame, match="magic"):
        FrameHeader.decode(b"XXXX" + encoded[4:])


@settings(deadline=None)  # a loaded CI machine must not turn slowness into a failure
@given(st.binary(min_size=FRAME_HEADER_BYTES, max_size=FRAME_HEADER_BYTES))
def test_fuzz_frame_header_only_raises_corrupt_frame(data: bytes) -> None:
    try:
        header = FrameHeader.decode(data)
    except CorruptFrame:
        return
    assert header.length <= MAX_CHUNK_FRAME_BYTES


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MESSAGES), st.data())
def test_fuzz_mutated_messages_decode_or_refuse(message: object, data: st.DataObject) -> None:
    """Any byte string derived from a valid message either decodes or raises CorruptFrame."""
    encoded = bytearray(message.encode())  # type: ignore[attr-defined]
    for _ in range(data.draw(st.integers(1, 4))):
        if encoded and data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(encoded) - 1))
            encoded[i] = data.draw(st.integers(0, 255))
        else:
            cut = data.draw(st.integers(0, len(encoded)))
            encoded = encoded[:cut] + bytearray(data.draw(st.binary(max_size=8)))
    with contextlib.suppress(CorruptFrame):
        type(message).decode(bytes(encoded))  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256), st.integers(0, 200), st.integers(0, 255))
def test_fuzz_stream_parser(noise: bytes, flip_at: int, flip_to: int) -> None:
    """The socket-level parser on valid frames with one byte replaced, then noise: it reads
    frames or raises a TransferError, never anything else, and never hangs."""
    stream = bytearray(frame_bytes(FrameType.HEADER, HEADER.encode()))
    stream += frame_bytes(FrameType.END, End(3).encode())
    if flip_at < len(stream):
        stream[flip_at] = flip_to
    stream += noise
    a, b = socket.socketpair()
    try:
        a.sendall(stream)
        a.shutdown(socket.SHUT_WR)
        b.settimeout(1.0)
        with pytest.raises(TransferError):
            while True:
                frame_type, payload = read_control_frame(b, FrameType.HEADER, FrameType.END)
                if frame_type == FrameType.HEADER:
                    TransferHeader.decode(payload)
                elif frame_type == FrameType.END:
                    End.decode(payload)
                else:
                    ErrorMessage.decode(payload)
    finally:
        a.close()
        b.close()


def test_digest_ignores_arrival_order() -> None:
    records = [(0, 0, 4, b"a" * 16), (1, 0, 4, b"b" * 16), (0, 4, 8, b"c" * 16)]
    assert chunk_digest(records) == chunk_digest(records[::-1])
    assert chunk_digest(records) != chunk_digest(records[:2])
