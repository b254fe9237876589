"""Framing: the fixed 20-byte frame header, protocol bounds, and exact socket reads.

Every frame is ``FrameHeader`` + ``length`` payload bytes. The header carries its own CRC so
that a corrupted length is caught before it is used, and every length is checked against a
per-type bound before any buffer is allocated. Layout and rules: docs/wire-format.md.
"""

from __future__ import annotations

import socket
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from cryptography.hazmat.primitives.poly1305 import Poly1305

from prfaas.transfer.errors import CorruptFrame, PeerGone, TransferTimeout

MAGIC = b"PFKV"
VERSION = 3  # 2: the AUTH frame (peer authentication); 3: the header's prompt hash

# Protocol bounds; a receiver may configure tighter ones, never looser.
MAX_CONTROL_BYTES = 1 << 20  # HEADER, READY, END, TRAILER, ACK, ERROR payloads
# HELLO and AUTH arrive before the peer is authenticated: a stranger can make the receiver
# read at most these few bytes.
MAX_HELLO_BYTES = 512
MAX_AUTH_BYTES = 64
MAX_CHUNK_FRAME_BYTES = 64 << 20  # one CHUNK payload (meta + encoded data)
MAX_LAYERS = 4096
MAX_NDIM = 8
MAX_NAME_BYTES = 256
MAX_REQUEST_ID_BYTES = 256
MAX_FINGERPRINT_BYTES = 128
PROMPT_HASH_BYTES = 16  # a block hash's size (kvcache/hashing.py)
MAX_CONNECTIONS = 64
MAX_MESSAGE_BYTES = 1024

CHECK_PIECE_BYTES = 256 << 10  # CHUNK checksums are computed piecewise, while in cache
CHECK_BYTES = 16  # footer after every CHUNK payload: Poly1305 of meta + data
# Poly1305 under a fixed, public key is a fast error-detecting checksum (~2x crc32 here),
# not a MAC: protection against an attacker is TLS's job.
_CHECK_KEY = bytes(range(32))


def chunk_checksum() -> Poly1305:
    """A fresh CHUNK checksum; update() with meta then data, finalize() -> 16 bytes."""
    return Poly1305(_CHECK_KEY)


# magic(4) version(u8) type(u8) flags(u16) length(u32) payload_crc(u32) header_crc(u32)
_HEADER = struct.Struct("<4sBBHIII")
FRAME_HEADER_BYTES = _HEADER.size  # 20
_HEADER_CRC_SPAN = FRAME_HEADER_BYTES - 4


class FrameType(IntEnum):
    HELLO = 1  # sender -> receiver, first frame on every connection
    HEADER = 2  # sender -> receiver, second frame on connection 0
    READY = 3  # receiver -> sender on connection 0: layers already complete (resume)
    CHUNK = 4  # sender -> receiver, any connection: one block range of one layer
    END = 5  # sender -> receiver, last frame on every connection
    TRAILER = 6  # sender -> receiver on connection 0 after every END: chunk count + digest
    ACK = 7  # receiver -> sender on connection 0: everything landed and verified
    ERROR = 8  # either direction: typed refusal, then the sender closes
    AUTH = 9  # sender -> receiver, right after HELLO when the receiver requires a KV key


def max_payload_bytes(frame_type: FrameType) -> int:
    """Upper bound of a frame's payload, checked before reading or allocating."""
    if frame_type == FrameType.CHUNK:
        return MAX_CHUNK_FRAME_BYTES
    if frame_type == FrameType.HELLO:
        return MAX_HELLO_BYTES
    if frame_type == FrameType.AUTH:
        return MAX_AUTH_BYTES
    return MAX_CONTROL_BYTES


@dataclass(frozen=True)
class FrameHeader:
    frame_type: FrameType
    length: int  # payload bytes following the header
    payload_crc: int  # zlib.crc32 of the payload; 0 for CHUNK (checksum in a footer)

    def encode(self) -> bytes:
        head = _HEADER.pack(MAGIC, VERSION, self.frame_type, 0, self.length, self.payload_crc, 0)
        return head[:_HEADER_CRC_SPAN] + struct.pack("<I", zlib.crc32(head[:_HEADER_CRC_SPAN]))

    @staticmethod
    def decode(data: bytes | bytearray | memoryview) -> FrameHeader:
        if len(data) != FRAME_HEADER_BYTES:
            raise CorruptFrame(f"frame header is {len(data)} bytes, want {FRAME_HEADER_BYTES}")
        magic, version, type_code, flags, length, payload_crc, header_crc = _HEADER.unpack(data)
        if magic != MAGIC:
            raise CorruptFrame(f"bad magic {bytes(magic)!r}")
        if zlib.crc32(bytes(data[:_HEADER_CRC_SPAN])) != header_crc:
            raise CorruptFrame("frame header checksum mismatch")
        if version != VERSION:
            raise CorruptFrame(f"unsupported wire version {version} (this side speaks {VERSION})")
        if flags != 0:
            raise CorruptFrame(f"unknown frame flags {flags:#x}")
        try:
            frame_type = FrameType(type_code)
        except ValueError:
            raise CorruptFrame(f"unknown frame type {type_code}") from None
        if frame_type == FrameType.CHUNK and payload_crc != 0:
            raise CorruptFrame("CHUNK frames carry their checksum in the footer")
        if length > max_payload_bytes(frame_type):
            raise CorruptFrame(f"{frame_type.name} frame of {length} bytes exceeds its bound")
        return FrameHeader(frame_type, length, payload_crc)


def frame_bytes(frame_type: FrameType, payload: bytes) -> bytes:
    """A whole control frame: header + payload."""
    if len(payload) > max_payload_bytes(frame_type):
        raise ValueError(f"{frame_type.name} payload of {len(payload)} bytes exceeds its bound")
    return FrameHeader(frame_type, len(payload), zlib.crc32(payload)).encode() + payload


def recv_exact_into(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock``; typed errors on EOF, reset or the socket's timeout."""
    offset, total = 0, len(view)
    try:
        while offset < total:
            n = sock.recv_into(view[offset:], total - offset)
            if n == 0:
                raise PeerGone(f"peer closed the connection after {offset}/{total} bytes")
            offset += n
    except TimeoutError:
        raise TransferTimeout(f"no data for the stall deadline ({offset}/{total} bytes)") from None
    except (ConnectionError, OSError) as exc:
        if isinstance(exc, PeerGone | TransferTimeout):
            raise
        raise PeerGone(f"connection failed: {exc}") from None


def send_all(sock: socket.socket, data: bytes | memoryview) -> None:
    """``sock.sendall`` with typed errors."""
    try:
        sock.sendall(data)
    except TimeoutError:
        raise TransferTimeout("send made no progress within the stall deadline") from None
    except (ConnectionError, OSError) as exc:
        raise PeerGone(f"connection failed while sending: {exc}") from None


def recv_exact_into_checked(sock: socket.socket, view: memoryview, check: Poly1305) -> None:
    """recv_exact_into, feeding each piece to ``check`` as soon as it has landed."""
    for offset in range(0, len(view), CHECK_PIECE_BYTES):
        piece = view[offset : offset + CHECK_PIECE_BYTES]
        recv_exact_into(sock, piece)
        check.update(piece)


def read_frame_header(sock: socket.socket) -> FrameHeader:
    buf = bytearray(FRAME_HEADER_BYTES)
    recv_exact_into(sock, memoryview(buf))
    return FrameHeader.decode(buf)


def read_payload(sock: socket.socket, header: FrameHeader) -> bytes:
    """Read and checksum a control frame's payload (already bounded by the header)."""
    buf = bytearray(header.length)
    recv_exact_into(sock, memoryview(buf))
    if zlib.crc32(buf) != header.payload_crc:
        raise CorruptFrame(f"{header.frame_type.name} payload checksum mismatch")
    return bytes(buf)


def read_control_frame(sock: socket.socket, *expected: FrameType) -> tuple[FrameType, bytes]:
    """Read one whole control frame whose type must be in ``expected`` (or ERROR)."""
    header = read_frame_header(sock)
    if header.frame_type not in expected and header.frame_type != FrameType.ERROR:
        names = "/".join(t.name for t in expected)
        raise CorruptFrame(f"expected {names}, got {header.frame_type.name}")
    return header.frame_type, read_payload(sock, header)
