"""Transport codecs: a lossy stage (raw, int8, fp8) then an optional lossless stage.

A codec works on one chunk: a C-contiguous array of whole blocks, shape (num_blocks, ...).
Scales are per block and per head: the chunk is viewed as (B, M, H, D) with B = blocks,
H = shape[-2] (heads), D = shape[-1] (head_dim) and M = the product of the axes between;
2-D chunks are (B, 1, 1, D) and 1-D chunks (1, 1, 1, N). Lossy stages apply to float
BLOCKS layers only; states and integer layers always travel raw (a recurrent state's error
would compound over decoding), optionally through the lossless stage.

Error bounds (per element, before the final rounding to the stored dtype):
  raw   exact
  int8  |x - x'| <= s / 2 with s = amax(block, head) / 127
  fp8   |x - x'| <= |x| / 16 + s * 2^-10 with s = amax(block, head) / 448
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import IntEnum
from math import prod
from typing import Protocol

import numpy as np

from prfaas.transfer import fp8
from prfaas.transfer.errors import CorruptFrame
from prfaas.transfer.lossless import Lossless, compress, decompress
from prfaas.transfer.messages import DType, LayerEntry, LayerKind


class LossyId(IntEnum):
    RAW = 0
    INT8 = 1
    FP8 = 2


def geometry(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(B, M, H, D) view of a chunk for per-block, per-head scales."""
    if len(shape) >= 3:
        return shape[0], prod(shape[1:-2]), shape[-2], shape[-1]
    if len(shape) == 2:
        return shape[0], 1, 1, shape[1]
    return 1, 1, 1, shape[0]


# float16 -> float32 by table: numpy's own cast runs element by element (no F16C here)
_F16_TO_F32 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
GROUP_ELEMENTS = 1 << 18  # codec math runs on groups of blocks this size, in cache


_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """A per-thread reusable array: fresh multi-MiB temporaries cost a page fault and a
    zeroed page per 4 KiB, which was most of the decode time."""
    size = prod(shape)
    buf: np.ndarray | None = getattr(_local, name, None)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = np.empty(max(size, GROUP_ELEMENTS), dtype)
        setattr(_local, name, buf)
    return buf[:size].reshape(shape)


def to_float32(x: np.ndarray, dtype: DType) -> np.ndarray:
    """float32 copy of ``x`` (a per-thread scratch array for float16: use it at once)."""
    if dtype == DType.BFLOAT16:  # the upper half of a float32
        return (x.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if dtype == DType.FLOAT16:
        index = scratch("f16_index", x.shape, np.intp)
        np.copyto(index, x.view(np.uint16))
        return np.take(_F16_TO_F32, index, out=scratch("f16_values", x.shape, np.float32))
    return x.astype(np.float32)


def store_float32(values: np.ndarray, dtype: DType, out: np.ndarray) -> None:
    """Round float32 ``values`` to ``dtype`` into ``out`` (same shape)."""
    if dtype == DType.BFLOAT16:
        bits = values.view(np.uint32)
        rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))  # nearest even
        np.copyto(out.view(np.uint16), (rounded >> 16).astype(np.uint16))
    else:
        np.copyto(out, values, casting="unsafe")


def abs_max(x: np.ndarray, dtype: DType) -> np.ndarray:
    """amax over (M, D) of a (B, M, H, D) array -> (B, H) float32, via the bit patterns
    (clearing the sign bit keeps the order of finite floats, and integer max is fast)."""
    if dtype == DType.FLOAT32:
        bits = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
        return bits.max(axis=(1, 3)).view(np.float32)
    top16 = (x.view(np.uint16) & np.uint16(0x7FFF)).max(axis=(1, 3))
    if dtype == DType.BFLOAT16:
        return to_float32(top16, dtype)
    return top16.view(np.float16).astype(np.float32)


class LossyCodec(Protocol):
    """Plug point for a lossy stage. Contract: encode() output has exactly encoded_nbytes()
    bytes and stays valid until the thread's next encode(); decode_into() accepts exactly
    that many bytes and fills every element of ``out``."""

    codec_id: LossyId

    def encoded_nbytes(self, dtype: DType, shape: tuple[int, ...]) -> int: ...
    def element_nbytes(self, dtype: DType) -> int: ...
    def encode(self, chunk: np.ndarray, dtype: DType) -> np.ndarray: ...
    def decode_into(self, data: np.ndarray, out: np.ndarray, dtype: DType) -> None: ...


class RawCodec:
    """Bytes as stored; encode is a zero-copy view."""

    codec_id = LossyId.RAW

    def encoded_nbytes(self, dtype: DType, shape: tuple[int, ...]) -> int:
        return prod(shape) * dtype.itemsize

    def element_nbytes(self, dtype: DType) -> int:
        return dtype.itemsize

    def encode(self, chunk: np.ndarray, dtype: DType) -> np.ndarray:
        return chunk.reshape(-1).view(np.uint8)

    def decode_into(self, data: np.ndarray, out: np.ndarray, dtype: DType) -> None:
        np.copyto(out.reshape(-1).view(np.uint8), data)


class _ScaledCodec:
    """Shared layout of int8 and fp8: float32 scales (B, H), then one byte per element."""

    codec_id: LossyId
    qmax: float

    def encoded_nbytes(self, dtype: DType, shape: tuple[int, ...]) -> int:
        b, _, h, _ = geometry(shape)
        return b * h * 4 + prod(shape)

    def element_nbytes(self, dtype: DType) -> int:
        return 1

    def encode(self, chunk: np.ndarray, dtype: DType) -> np.ndarray:
        b, m, h, d = geometry(chunk.shape)
        x = chunk.reshape(b, m, h, d)
        scale = abs_max(x, dtype) / np.float32(self.qmax)
        scale[~(scale > 0)] = 1.0  # all-zero heads (and NaN) get a harmless scale
        # Reused per thread: the caller sends (or compresses) it before its next encode.
        out = scratch("encoded", (b * h * 4 + x.size,), np.uint8)
        out[: b * h * 4].view(np.float32)[:] = scale.ravel()
        codes = out[b * h * 4 :].reshape(b, m, h, d)
        inverse = (np.float32(1.0) / scale)[:, None, :, None]
        step = max(1, GROUP_ELEMENTS // (m * h * d))
        for i in range(0, b, step):
            values = to_float32(x[i : i + step], dtype)
            values *= inverse[i : i + step]
            self._quantize_into(values, codes[i : i + step])
        return out

    def decode_into(self, data: np.ndarray, out: np.ndarray, dtype: DType) -> None:
        """By table: per (block, head) the 256 possible outputs, already in ``dtype``, then
        one gather per element (cheaper than converting every element to ``dtype``)."""
        b, m, h, d = geometry(out.shape)
        scale = data[: b * h * 4].view(np.float32).reshape(b, h, 1)
        values = self.code_values[None, None, :] * scale  # (B, H, 256) float32
        table = np.empty(values.shape, out.dtype)
        store_float32(values, dtype, table)
        flat_table = table.reshape(-1)
        codes = data[b * h * 4 :].reshape(b, m, h, d)
        target = out.reshape(b, m, h, d)
        # row (i, h) of the table starts at (i * H + h) * 256
        base = (np.arange(b * h, dtype=np.intp) * 256).reshape(b, 1, h, 1)
        step = max(1, GROUP_ELEMENTS // (m * h * d))
        for i in range(0, b, step):
            group = codes[i : i + step]
            index = scratch("code_index", group.shape, np.intp)
            np.add(group, base[i : i + step], out=index)
            np.take(flat_table, index, out=target[i : i + step])

    code_values: np.ndarray  # (256,) float32: the value of each code before scaling

    def _quantize_into(self, values: np.ndarray, out: np.ndarray) -> None:
        raise NotImplementedError


class Int8Codec(_ScaledCodec):
    codec_id = LossyId.INT8
    qmax = 127.0

    def _quantize_into(self, values: np.ndarray, out: np.ndarray) -> None:
        np.rint(values, out=values)
        np.copyto(out.view(np.int8), values, casting="unsafe")

    code_values = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float32)


class Fp8Codec(_ScaledCodec):
    codec_id = LossyId.FP8
    qmax = fp8.E4M3_MAX

    def _quantize_into(self, values: np.ndarray, out: np.ndarray) -> None:
        fp8.encode_into(values, out)

    code_values = np.nan_to_num(fp8.DECODE)  # the two NaN codes are never produced


LOSSY: dict[LossyId, LossyCodec] = {
    LossyId.RAW: RawCodec(),
    LossyId.INT8: Int8Codec(),
    LossyId.FP8: Fp8Codec(),
}


@dataclass(frozen=True)
class CodecSpec:
    """A transfer's codec, written "raw", "int8", "fp8", optionally "+zstd" or "+lz4"."""

    lossy: LossyId = LossyId.RAW
    lossless: Lossless = Lossless.NONE

    @staticmethod
    def parse(text: str) -> CodecSpec:
        lossy_name, _, lossless_name = text.lower().partition("+")
        try:
            lossy = LossyId[lossy_name.upper()]
            return CodecSpec(lossy, Lossless[(lossless_name or "none").upper()])
        except KeyError:
            raise ValueError(f"unknown codec {text!r} (raw|int8|fp8 [+zstd|+lz4])") from None

    def __str__(self) -> str:
        tail = "" if self.lossless == Lossless.NONE else f"+{self.lossless.name.lower()}"
        return self.lossy.name.lower() + tail

    def lossy_for(self, layer: LayerEntry) -> LossyId:
        """Lossy stages apply to float BLOCKS layers only."""
        if layer.kind == LayerKind.BLOCKS and layer.dtype.is_float:
            return self.lossy
        return LossyId.RAW


def encode_chunk(chunk: np.ndarray, dtype: DType, lossy: LossyId, lossless: Lossless) -> memoryview:
    """The bytes of one CHUNK's data (a view of ``chunk`` itself for raw)."""
    codec = LOSSY[lossy]
    encoded = codec.encode(chunk, dtype)
    if lossless == Lossless.NONE:
        return encoded.data
    return memoryview(compress(encoded, lossless, codec.element_nbytes(dtype)))


def decode_chunk(
    data: np.ndarray, out: np.ndarray, dtype: DType, lossy: int, lossless: int
) -> None:
    """Decode one CHUNK's data (uint8) into ``out``, the destination block range."""
    try:
        codec, stage = LOSSY[LossyId(lossy)], Lossless(lossless)
    except ValueError:
        raise CorruptFrame(f"unknown codec ids {lossy}/{lossless}") from None
    expected = codec.encoded_nbytes(dtype, out.shape)
    if stage != Lossless.NONE:
        data = decompress(data.data, stage, codec.element_nbytes(dtype), expected)
    elif len(data) != expected:
        raise CorruptFrame(f"chunk data is {len(data)} bytes, its codec implies {expected}")
    codec.decode_into(data, out, dtype)


@dataclass(frozen=True)
class CodecReport:
    """What a codec does to a sample: wire bytes per stored byte, and its error."""

    ratio: float  # encoded bytes / stored bytes
    max_abs_error: float
    rel_rms_error: float  # rms(error) / rms(sample)


def codec_report(sample: np.ndarray, dtype: DType, spec: CodecSpec) -> CodecReport:
    """Run ``spec`` on a sample chunk (float BLOCKS data, shape (blocks, ...))."""
    encoded = encode_chunk(np.ascontiguousarray(sample), dtype, spec.lossy, spec.lossless)
    decoded = np.empty_like(sample)
    data = np.frombuffer(encoded, np.uint8)
    decode_chunk(data, decoded, dtype, spec.lossy, spec.lossless)
    ref, got = to_float32(sample, dtype).copy(), to_float32(decoded, dtype).copy()
    error = got.astype(np.float64) - ref
    rms = float(np.sqrt(np.mean(ref.astype(np.float64) ** 2))) or 1.0
    return CodecReport(
        ratio=len(encoded) / sample.nbytes,
        max_abs_error=float(np.abs(error).max()),
        rel_rms_error=float(np.sqrt(np.mean(error**2))) / rms,
    )
