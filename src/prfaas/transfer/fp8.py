"""FP8 E4M3 (the "fn" variant: bias 7, max 448, no infinities) in numpy lookup tables.

numpy has no fp8 type, so values are encoded through float16: float32 -> float16 (round to
nearest even) -> E4M3 code by a 65536-entry table built once with round-to-nearest-even on
the float16 value. Double rounding can move a value that sits exactly between two E4M3
values by one code; the stated error bound (relative 2^-4 + 2^-10 absolute) allows for it.
"""

from __future__ import annotations

import numpy as np

E4M3_MAX = 448.0
NAN_CODE = 0x7F


def _decode_table() -> np.ndarray:
    codes = np.arange(256)
    sign = np.where(codes >> 7, -1.0, 1.0)
    exponent = (codes >> 3) & 0xF
    mantissa = codes & 0x7
    subnormal = mantissa / 8.0 * 2.0**-6
    normal = (1.0 + mantissa / 8.0) * 2.0 ** (exponent - 7.0)
    values = sign * np.where(exponent == 0, subnormal, normal)
    values[[NAN_CODE, 0x80 | NAN_CODE]] = np.nan
    return values.astype(np.float32)


DECODE = _decode_table()  # (256,) float32: code -> value


def _encode_table() -> np.ndarray:
    magnitudes = DECODE[:NAN_CODE].astype(np.float64)  # codes 0..126, ascending
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    a = np.nan_to_num(np.minimum(np.abs(halves), E4M3_MAX))  # saturate; NaN fixed below
    hi = np.clip(np.searchsorted(magnitudes, a), 1, NAN_CODE - 1)
    lo = hi - 1
    d_lo, d_hi = a - magnitudes[lo], magnitudes[hi] - a
    # nearest; on a tie the even code (round to nearest even)
    code = np.where((d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0)), hi, lo)
    code = np.where(a <= 0.0, 0, code)
    code = code | np.where(np.signbit(halves), 0x80, 0)
    code = np.where(np.isnan(halves), NAN_CODE, code)
    return code.astype(np.uint8)


ENCODE_FROM_F16 = _encode_table()  # (65536,) uint8: float16 bit pattern -> code


def encode_into(values: np.ndarray, out: np.ndarray) -> None:
    """E4M3 codes of float32 ``values`` (already scaled into ±448) into uint8 ``out``."""
    with np.errstate(over="ignore"):  # beyond float16 range -> inf -> saturates to 448
        halves = values.astype(np.float16).view(np.uint16)
    np.take(ENCODE_FROM_F16, halves, out=out)


def decode(codes: np.ndarray) -> np.ndarray:
    """float32 values of uint8 E4M3 ``codes`` (same shape)."""
    return np.take(DECODE, codes)
