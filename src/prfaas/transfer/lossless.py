"""The optional lossless stage: byte-shuffle, then zstd or lz4.

Byte-shuffle groups byte 0 of every element, then byte 1, ... so that the slowly varying
sign/exponent bytes of floats sit together and compress. Compress only where the link, not
the CPU, is the bottleneck. Decompression is bounded by the size the header implies.
"""

from __future__ import annotations

import threading
from enum import IntEnum

import lz4.block
import numpy as np
import zstandard

from prfaas.transfer.errors import CorruptFrame


class Lossless(IntEnum):
    NONE = 0
    ZSTD = 1
    LZ4 = 2


_local = threading.local()  # zstd (de)compressor objects are not shareable across threads


def _zstd_compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_local, "zc"):
        _local.zc = zstandard.ZstdCompressor(level=1)
    return _local.zc


def shuffle(data: np.ndarray, element_nbytes: int) -> np.ndarray:
    """uint8 (n,) -> uint8 (n,), byte k of every element grouped; a tail shorter than one
    element stays at the end."""
    if element_nbytes == 1:
        return data
    body = len(data) - len(data) % element_nbytes
    out = np.empty_like(data)
    out[:body] = data[:body].reshape(-1, element_nbytes).T.ravel()
    out[body:] = data[body:]
    return out


def unshuffle(data: np.ndarray, element_nbytes: int) -> np.ndarray:
    if element_nbytes == 1:
        return data
    body = len(data) - len(data) % element_nbytes
    out = np.empty_like(data)
    out[:body] = data[:body].reshape(element_nbytes, -1).T.ravel()
    out[body:] = data[body:]
    return out


def compress(data: np.ndarray, kind: Lossless, element_nbytes: int) -> bytes:
    shuffled = shuffle(data, element_nbytes)
    if kind == Lossless.ZSTD:
        return bytes(_zstd_compressor().compress(shuffled.data))
    if kind == Lossless.LZ4:
        return bytes(lz4.block.compress(shuffled.data, store_size=False))
    raise ValueError(f"not a compressing stage: {kind}")


def decompress(
    data: bytes | memoryview, kind: Lossless, element_nbytes: int, expected_nbytes: int
) -> np.ndarray:
    """Inverse of compress(); output must be exactly ``expected_nbytes`` (CorruptFrame else)."""
    try:
        if kind == Lossless.ZSTD:
            raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=expected_nbytes)
        elif kind == Lossless.LZ4:
            raw = lz4.block.decompress(data, uncompressed_size=expected_nbytes)
        else:
            raise CorruptFrame(f"unknown lossless stage {kind}")
    except (zstandard.ZstdError, lz4.block.LZ4BlockError) as exc:
        raise CorruptFrame(f"decompression failed: {exc}") from None
    if len(raw) != expected_nbytes:
        raise CorruptFrame(f"decompressed {len(raw)} bytes, want {expected_nbytes}")
    return unshuffle(np.frombuffer(raw, np.uint8), element_nbytes)
