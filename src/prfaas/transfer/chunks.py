"""One CHUNK frame, both ways: how the sender writes a block range and how the receiver
lands it (in place for raw chunks, through a staging buffer for encoded ones).

    header (20 B) | meta (16 B) | data (encoded rows) | footer: Poly1305(meta + data) (16 B)

The checksum is fed piecewise, as each piece is sent or lands, while it is in cache.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.poly1305 import Poly1305

from prfaas.transfer.codecs import CodecSpec, LossyId, decode_chunk, encode_chunk
from prfaas.transfer.errors import CorruptFrame
from prfaas.transfer.landing import Landing
from prfaas.transfer.lossless import Lossless
from prfaas.transfer.messages import CHUNK_META, ChunkMeta, LayerEntry
from prfaas.transfer.wire import (
    CHECK_BYTES,
    FrameHeader,
    FrameType,
    chunk_checksum,
    recv_exact_into,
    recv_exact_into_checked,
)

Record = tuple[int, int, int, bytes]  # (layer, block_start, block_end, footer)
Send = Callable[[bytes | memoryview, Poly1305 | None], None]


@dataclass(frozen=True)
class ChunkJob:
    layer: int
    start: int
    end: int  # exclusive
    rows: np.ndarray  # blocks [start, end) of the layer's array (a view, not a copy)


def write_chunk(send: Send, job: ChunkJob, entry: LayerEntry, spec: CodecSpec) -> Record:
    """Encode and send one block range through ``send`` (the paced writer)."""
    lossy = spec.lossy_for(entry)
    data = encode_chunk(job.rows, entry.dtype, lossy, spec.lossless)
    meta = ChunkMeta(job.layer, job.start, job.end, lossy, spec.lossless).encode()
    check = chunk_checksum()
    check.update(meta)
    send(FrameHeader(FrameType.CHUNK, len(meta) + len(data), 0).encode() + meta, None)
    send(data, check)
    tag = check.finalize()
    send(tag, None)
    return job.layer, job.start, job.end, tag


class ChunkReader:
    """Lands the CHUNK frames of one connection of one attempt; owns its staging buffer
    (at most one frame: bounded by the frame header's check)."""

    def __init__(self, sock: socket.socket, landing: Landing, attempt: int) -> None:
        self.sock, self.landing, self.attempt = sock, landing, attempt
        self._staging = bytearray()

    def read(self, frame: FrameHeader) -> int | None:
        """Land one CHUNK whose header was read; the layer index if it completed it."""
        sock, landing = self.sock, self.landing
        meta_bytes = bytearray(CHUNK_META.size)
        if frame.length < len(meta_bytes):
            raise CorruptFrame("CHUNK shorter than its meta")
        recv_exact_into(sock, memoryview(meta_bytes))
        meta = ChunkMeta.decode(meta_bytes)
        dest = landing.claim(self.attempt, meta.layer, meta.block_start, meta.block_end)
        entry = landing.header.layers[meta.layer]
        data_nbytes = frame.length - len(meta_bytes)
        if meta.lossy != LossyId.RAW and not entry.dtype.is_float:
            raise CorruptFrame(f"lossy codec on {entry.dtype.name} layer {entry.name!r}")
        direct = meta.lossy == LossyId.RAW and meta.lossless == Lossless.NONE
        if direct:
            if data_nbytes != dest.nbytes:
                raise CorruptFrame(f"raw chunk of {data_nbytes} bytes for {dest.nbytes}")
            view = dest.reshape(-1).view(np.uint8).data  # dest is a C-contiguous row range
        else:
            if len(self._staging) < data_nbytes:
                self._staging = bytearray(data_nbytes)
            view = memoryview(self._staging)[:data_nbytes]
        check = chunk_checksum()
        check.update(meta_bytes)
        recv_exact_into_checked(sock, view, check)  # raw: straight into the destination
        footer = bytearray(CHECK_BYTES)
        recv_exact_into(sock, memoryview(footer))
        tag = check.finalize()
        if tag != footer:
            raise CorruptFrame(f"chunk layer {meta.layer} blocks {meta.block_start}.. checksum")
        if not direct:
            data = np.frombuffer(self._staging, np.uint8, count=data_nbytes)
            decode_chunk(data, dest, entry.dtype, meta.lossy, meta.lossless)
        done = landing.landed(self.attempt, meta.layer, meta.block_start, meta.block_end, tag)
        return meta.layer if done else None
