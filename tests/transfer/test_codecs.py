"""Codec round trips: raw exact, int8 and fp8 within their stated bounds, lossless exact."""

from __future__ import annotations

import numpy as np
import pytest

from prfaas.transfer import fp8
from prfaas.transfer.codecs import (
    CodecSpec,
    LossyId,
    codec_report,
    decode_chunk,
    encode_chunk,
    geometry,
)
from prfaas.transfer.errors import CorruptFrame
from prfaas.transfer.lossless import Lossless, shuffle, unshuffle
from prfaas.transfer.messages import DType

SHAPE = (3, 2, 16, 4, 32)  # (blocks, k/v, tokens, heads, head_dim)


def _sample(dtype: DType, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(SHAPE, dtype=np.float32) * rng.uniform(0.01, 10, (3, 1, 1, 4, 1))
    x = x.astype(np.float32)
    if dtype == DType.BFLOAT16:
        return (x.view(np.uint32) >> 16).astype(np.uint16)
    return x.astype(dtype.numpy_name)


def _as_f32(x: np.ndarray, dtype: DType) -> np.ndarray:
    if dtype == DType.BFLOAT16:
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32)


def _roundtrip(x: np.ndarray, dtype: DType, lossy: LossyId, lossless: Lossless) -> np.ndarray:
    data = np.frombuffer(encode_chunk(x, dtype, lossy, lossless), np.uint8)
    out = np.empty_like(x)
    decode_chunk(data, out, dtype, lossy, lossless)
    return out


def _head_amax(x: np.ndarray) -> np.ndarray:
    b, m, h, d = geometry(x.shape)
    return np.abs(x.reshape(b, m, h, d)).max(axis=(1, 3), keepdims=True)


@pytest.mark.parametrize("dtype", [DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16])
@pytest.mark.parametrize("lossless", list(Lossless))
def test_raw_is_exact(dtype: DType, lossless: Lossless) -> None:
    x = _sample(dtype)
    assert np.array_equal(_roundtrip(x, dtype, LossyId.RAW, lossless), x)


@pytest.mark.parametrize("dtype", [DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16])
@pytest.mark.parametrize("lossless", [Lossless.NONE, Lossless.ZSTD])
def test_int8_within_half_a_step_per_block_and_head(dtype: DType, lossless: Lossless) -> None:
    x = _sample(dtype)
    ref = _as_f32(x, dtype)
    got = _as_f32(_roundtrip(x, dtype, LossyId.INT8, lossless), dtype)
    b, m, h, d = geometry(x.shape)
    step = _head_amax(ref) / 127
    store_eps = {DType.FLOAT32: 1e-6, DType.FLOAT16: 2**-10, DType.BFLOAT16: 2**-7}[dtype]
    err = np.abs(got - ref).reshape(b, m, h, d)
    bound = step / 2 + np.abs(ref).reshape(b, m, h, d) * store_eps + 1e-7
    assert (err <= bound).all(), float((err / bound).max())
    assert err.max() > 0  # it is lossy: the test would notice a silent raw fallback


@pytest.mark.parametrize("dtype", [DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16])
def test_fp8_within_relative_bound(dtype: DType) -> None:
    x = _sample(dtype, seed=1)
    ref = _as_f32(x, dtype)
    got = _as_f32(_roundtrip(x, dtype, LossyId.FP8, Lossless.LZ4), dtype)
    b, m, h, d = geometry(x.shape)
    scale = _head_amax(ref) / fp8.E4M3_MAX
    store_eps = {DType.FLOAT32: 1e-6, DType.FLOAT16: 2**-10, DType.BFLOAT16: 2**-7}[dtype]
    r = np.abs(ref).reshape(b, m, h, d)
    bound = r / 16 + scale * 2**-10 + r * store_eps + 1e-7
    assert (np.abs(got - ref).reshape(b, m, h, d) <= bound).all()


def test_fp8_tables_round_trip_every_finite_code() -> None:
    codes = np.array([c for c in range(256) if c & 0x7F != fp8.NAN_CODE], np.uint8)
    values = fp8.decode(codes)
    out = np.empty(len(values), np.uint8)
    fp8.encode_into(values, out)
    assert np.array_equal(fp8.decode(out), values)  # +0/-0 may swap codes, not values
    assert fp8.decode(np.array([0x7E], np.uint8))[0] == 448.0
    big = np.empty(1, np.uint8)
    fp8.encode_into(np.array([1e6], np.float32), big)
    assert fp8.decode(big)[0] == 448.0  # saturates


def test_zero_blocks_survive_quantization() -> None:
    x = np.zeros(SHAPE, np.float16)
    for lossy in (LossyId.INT8, LossyId.FP8):
        assert np.array_equal(_roundtrip(x, DType.FLOAT16, lossy, Lossless.NONE), x)


def test_int8_halves_fp16_bytes() -> None:
    x = _sample(DType.FLOAT16)
    data = encode_chunk(x, DType.FLOAT16, LossyId.INT8, Lossless.NONE)
    b, _, h, _ = geometry(x.shape)
    assert len(data) == x.size + b * h * 4  # one byte per element + fp32 scales


def test_shuffle_inverts() -> None:
    data = np.frombuffer(np.random.default_rng(0).bytes(1001), np.uint8)
    for element in (1, 2, 4):
        assert np.array_equal(unshuffle(shuffle(data, element), element), data)


def test_decode_refuses_wrong_sizes_and_ids() -> None:
    x = _sample(DType.FLOAT16)
    data = np.frombuffer(encode_chunk(x, DType.FLOAT16, LossyId.RAW, Lossless.NONE), np.uint8)
    out = np.empty_like(x)
    with pytest.raises(CorruptFrame):
        decode_chunk(data[:-2].copy(), out, DType.FLOAT16, LossyId.INT8, Lossless.NONE)
    with pytest.raises(CorruptFrame):
        decode_chunk(data, out, DType.FLOAT16, 9, Lossless.NONE)
    with pytest.raises(CorruptFrame):  # not a zstd frame
        decode_chunk(data, out, DType.FLOAT16, LossyId.RAW, Lossless.ZSTD)


def test_codec_spec_parses_and_prints() -> None:
    assert str(CodecSpec.parse("int8+zstd")) == "int8+zstd"
    assert CodecSpec.parse("raw") == CodecSpec()
    with pytest.raises(ValueError):
        CodecSpec.parse("gzip")


def test_codec_report_states_ratio_and_error() -> None:
    x = _sample(DType.FLOAT16)
    raw = codec_report(x, DType.FLOAT16, CodecSpec.parse("raw"))
    int8 = codec_report(x, DType.FLOAT16, CodecSpec.parse("int8"))
    assert raw.ratio == 1.0 and raw.max_abs_error == 0.0
    assert int8.ratio == pytest.approx(0.5, abs=0.01)
    assert 0 < int8.rel_rms_error < 0.02
