"""Typed wire messages with explicit encode/decode (frame payloads; never pickle).

Decoding is strict: every count and string length is checked against its bound before it is
used, trailing bytes are refused, and any violation raises CorruptFrame.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum
from math import prod
from typing import TypeVar

from prfaas.transfer.errors import CorruptFrame
from prfaas.transfer.wire import (
    MAX_CONNECTIONS,
    MAX_FINGERPRINT_BYTES,
    MAX_LAYERS,
    MAX_MESSAGE_BYTES,
    MAX_NAME_BYTES,
    MAX_NDIM,
    MAX_REQUEST_ID_BYTES,
    PROMPT_HASH_BYTES,
)

_E = TypeVar("_E", bound=IntEnum)


class DType(IntEnum):
    """Element types as stored; bfloat16 travels (and lands) as its raw 16-bit pattern."""

    FLOAT32 = 1
    FLOAT16 = 2
    BFLOAT16 = 3
    INT8 = 4
    UINT8 = 5
    INT32 = 6
    INT64 = 7

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]

    @property
    def numpy_name(self) -> str:
        """The numpy dtype the receiver lands this type in."""
        return _NUMPY_NAME[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16)

    @staticmethod
    def parse(name: str) -> DType:
        return DType[name.upper()]


_ITEMSIZE = {DType.FLOAT32: 4, DType.FLOAT16: 2, DType.BFLOAT16: 2, DType.INT8: 1}
_ITEMSIZE |= {DType.UINT8: 1, DType.INT32: 4, DType.INT64: 8}
_NUMPY_NAME = {DType.FLOAT32: "float32", DType.FLOAT16: "float16", DType.BFLOAT16: "uint16"}
_NUMPY_NAME |= {DType.INT8: "int8", DType.UINT8: "uint8", DType.INT32: "int32"}
_NUMPY_NAME |= {DType.INT64: "int64"}


class LayerKind(IntEnum):
    BLOCKS = 1  # paged KV of a full-attention layer; axis 0 is the block index
    STATE = 2  # fixed-size state of a linear-attention layer


class _Reader:
    """Bounded cursor over a payload; every read checks the remaining length."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def unpack(self, fmt: str) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise CorruptFrame("message truncated")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def blob(self, max_bytes: int) -> bytes:
        (n,) = self.unpack("<H")
        if n > max_bytes:
            raise CorruptFrame(f"field of {n} bytes exceeds its bound {max_bytes}")
        return self.fixed(n)

    def fixed(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CorruptFrame(f"field of {n} bytes exceeds the message")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def text(self, max_bytes: int) -> str:
        try:
            return self.blob(max_bytes).decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptFrame("text field is not utf-8") from None

    def done(self) -> None:
        if self.pos != len(self.data):
            raise CorruptFrame(f"{len(self.data) - self.pos} trailing bytes in message")


def _blob(data: bytes, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise ValueError(f"field of {len(data)} bytes exceeds bound {max_bytes}")
    return struct.pack("<H", len(data)) + data


def _enum(cls: type[_E], value: int) -> _E:
    try:
        return cls(value)
    except ValueError:
        raise CorruptFrame(f"unknown {cls.__name__} {value}") from None


@dataclass(frozen=True)
class Hello:
    """First frame of every connection: which transfer and which stripe it belongs to."""

    request_id: str
    conn_index: int
    num_connections: int
    attempt: int  # 0 for a fresh transfer, incremented by each resume
    resume: bool

    def encode(self) -> bytes:
        head = _blob(self.request_id.encode(), MAX_REQUEST_ID_BYTES)
        return head + struct.pack(
            "<HHIB", self.conn_index, self.num_connections, self.attempt, self.resume
        )

    @staticmethod
    def decode(data: bytes) -> Hello:
        r = _Reader(data)
        request_id = r.text(MAX_REQUEST_ID_BYTES)
        conn_index, num_connections, attempt, resume = r.unpack("<HHIB")
        r.done()
        if not 1 <= num_connections <= MAX_CONNECTIONS or conn_index >= num_connections:
            raise CorruptFrame(f"connection {conn_index} of {num_connections} is out of bounds")
        if resume > 1:
            raise CorruptFrame("resume flag is not 0/1")
        return Hello(request_id, conn_index, num_connections, attempt, bool(resume))


@dataclass(frozen=True)
class LayerEntry:
    """One layer of the payload. ``shape[0]`` is the chunking axis (blocks, or state rows)."""

    name: str
    kind: LayerKind
    dtype: DType
    shape: tuple[int, ...]

    @property
    def num_bytes(self) -> int:
        return prod(self.shape) * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        """Bytes of one index along axis 0 (one block)."""
        return prod(self.shape[1:]) * self.dtype.itemsize


@dataclass(frozen=True)
class TransferHeader:
    """What the receiver needs to preallocate: identity, layout, codec and total size."""

    request_id: str
    fingerprint: bytes  # model fingerprint; the receiver refuses a mismatch
    codec: str  # the transfer's codec spec, e.g. "int8+zstd" (chunks say what they carry)
    layers: tuple[LayerEntry, ...]
    # PROMPT_HASH_BYTES naming the prompt the KV was computed for (opaque here; the decode
    # side compares it with its own hash of the prompt it reserved for, docs/wire-format.md)
    prompt_hash: bytes

    @property
    def raw_bytes(self) -> int:
        return sum(layer.num_bytes for layer in self.layers)

    def encode(self) -> bytes:
        out = [_blob(self.request_id.encode(), MAX_REQUEST_ID_BYTES)]
        out.append(_blob(self.fingerprint, MAX_FINGERPRINT_BYTES))
        if len(self.prompt_hash) != PROMPT_HASH_BYTES:
            raise ValueError(
                f"prompt hash of {len(self.prompt_hash)} bytes, not {PROMPT_HASH_BYTES}"
            )
        out.append(self.prompt_hash)
        out.append(_blob(self.codec.encode(), MAX_NAME_BYTES))
        if len(self.layers) > MAX_LAYERS:
            raise ValueError(f"{len(self.layers)} layers exceed {MAX_LAYERS}")
        out.append(struct.pack("<I", len(self.layers)))
        for layer in self.layers:
            out.append(_blob(layer.name.encode(), MAX_NAME_BYTES))
            out.append(struct.pack("<BBB", layer.kind, layer.dtype, len(layer.shape)))
            out.append(struct.pack(f"<{len(layer.shape)}Q", *layer.shape))
        out.append(struct.pack("<Q", self.raw_bytes))
        return b"".join(out)

    @staticmethod
    def decode(data: bytes) -> TransferHeader:
        r = _Reader(data)
        request_id = r.text(MAX_REQUEST_ID_BYTES)
        fingerprint = r.blob(MAX_FINGERPRINT_BYTES)
        prompt_hash = r.fixed(PROMPT_HASH_BYTES)
        codec = r.text(MAX_NAME_BYTES)
        (num_layers,) = r.unpack("<I")
        if num_layers > MAX_LAYERS:
            raise CorruptFrame(f"{num_layers} layers exceed {MAX_LAYERS}")
        layers = []
        for _ in range(num_layers):
            name = r.text(MAX_NAME_BYTES)
            kind, dtype, ndim = r.unpack("<BBB")
            if not 1 <= ndim <= MAX_NDIM:
                raise CorruptFrame(f"layer {name!r} has {ndim} dimensions")
            shape = r.unpack(f"<{ndim}Q")
            if any(dim < 1 or dim >= 1 << 40 for dim in shape) or shape[0] >= 1 << 32:
                raise CorruptFrame(f"layer {name!r} has shape {shape}")
            layers.append(
                LayerEntry(name, _enum(LayerKind, kind), _enum(DType, dtype), tuple(shape))
            )
        (raw_bytes,) = r.unpack("<Q")
        r.done()
        header = TransferHeader(request_id, fingerprint, codec, tuple(layers), prompt_hash)
        if header.raw_bytes != raw_bytes:
            raise CorruptFrame(f"total {raw_bytes} bytes disagrees with the layers")
        return header


@dataclass(frozen=True)
class Ready:
    """Receiver's answer to HEADER: the layers it already holds (non-empty only on resume)."""

    num_layers: int
    complete_layers: frozenset[int]

    def encode(self) -> bytes:
        bitmap = bytearray((self.num_layers + 7) // 8)
        for index in self.complete_layers:
            bitmap[index // 8] |= 1 << (index % 8)
        return struct.pack("<I", self.num_layers) + bytes(bitmap)

    @staticmethod
    def decode(data: bytes) -> Ready:
        r = _Reader(data)
        (num_layers,) = r.unpack("<I")
        if num_layers > MAX_LAYERS or len(data) != 4 + (num_layers + 7) // 8:
            raise CorruptFrame("READY bitmap does not match its layer count")
        bits = data[4:]
        complete = {i for i in range(num_layers) if bits[i // 8] >> (i % 8) & 1}
        return Ready(num_layers, frozenset(complete))


CHUNK_META = struct.Struct("<IIIBBH")  # layer, block_start, block_end, lossy, lossless, 0


@dataclass(frozen=True)
class ChunkMeta:
    """Fixed prefix of a CHUNK payload; the encoded block range follows it."""

    layer: int
    block_start: int
    block_end: int  # exclusive
    lossy: int  # codec ids, see codecs.py
    lossless: int

    def encode(self) -> bytes:
        return CHUNK_META.pack(
            self.layer, self.block_start, self.block_end, self.lossy, self.lossless, 0
        )

    @staticmethod
    def decode(data: bytes | bytearray | memoryview) -> ChunkMeta:
        if len(data) != CHUNK_META.size:
            raise CorruptFrame("chunk meta truncated")
        layer, start, end, lossy, lossless, reserved = CHUNK_META.unpack(data)
        if reserved != 0 or start >= end:
            raise CorruptFrame(f"chunk meta invalid (blocks {start}..{end})")
        return ChunkMeta(layer, start, end, lossy, lossless)


@dataclass(frozen=True)
class End:
    """Last frame of one connection: how many chunks it carried."""

    num_chunks: int

    def encode(self) -> bytes:
        return struct.pack("<Q", self.num_chunks)

    @staticmethod
    def decode(data: bytes) -> End:
        r = _Reader(data)
        (num_chunks,) = r.unpack("<Q")
        r.done()
        return End(num_chunks)


@dataclass(frozen=True)
class Trailer:
    """Closes an attempt: chunk count and digest over this attempt's chunk records."""

    num_chunks: int
    digest: bytes  # 32 bytes, see chunk_digest()

    def encode(self) -> bytes:
        if len(self.digest) != 32:
            raise ValueError("digest must be 32 bytes")
        return struct.pack("<Q", self.num_chunks) + self.digest

    @staticmethod
    def decode(data: bytes) -> Trailer:
        if len(data) != 40:
            raise CorruptFrame("TRAILER must be 40 bytes")
        (num_chunks,) = struct.unpack_from("<Q", data)
        return Trailer(num_chunks, data[8:])


@dataclass(frozen=True)
class Ack:
    """Receiver confirms: every layer landed and the digest matched."""

    num_chunks: int

    def encode(self) -> bytes:
        return struct.pack("<Q", self.num_chunks)

    @staticmethod
    def decode(data: bytes) -> Ack:
        r = _Reader(data)
        (num_chunks,) = r.unpack("<Q")
        r.done()
        return Ack(num_chunks)


@dataclass(frozen=True)
class ErrorMessage:
    code: int  # errors.ErrorCode
    message: str

    def encode(self) -> bytes:
        text = self.message.encode()[:MAX_MESSAGE_BYTES]
        return struct.pack("<H", self.code) + _blob(text, MAX_MESSAGE_BYTES)

    @staticmethod
    def decode(data: bytes) -> ErrorMessage:
        r = _Reader(data)
        (code,) = r.unpack("<H")
        message = r.blob(MAX_MESSAGE_BYTES).decode("utf-8", errors="replace")
        r.done()
        return ErrorMessage(code, message)


_RECORD = struct.Struct("<III16s")


def chunk_digest(records: list[tuple[int, int, int, bytes]]) -> bytes:
    """32-byte digest of an attempt's chunks, independent of their arrival order.

    A record is (layer, block_start, block_end, the CHUNK's 16-byte checksum)."""
    h = hashlib.blake2b(digest_size=32)
    for record in sorted(records):
        h.update(_RECORD.pack(*record))
    return h.digest()
