"""Prefill profiles: S_kv(l) in bytes and T_prefill(l) in seconds for one instance type.

Three sources, one interface (``prefill_s`` and ``kv_bytes``, both vectorized over lengths):
- ``TableProfile``: measured rows (e.g. the paper's Table 5) with a least-squares polynomial
  in the token count (``fit="poly"``) or piecewise-linear interpolation (``fit="interp"``,
  extrapolated along the end segments). KV bytes get a degree-1 fit: S_kv is affine in l.
- ``ScaledProfile``: another profile's time curve mapped affinely, T(l) = a T_base(l) + b, with
  a and b fitted to anchor points (exact through two); used where only two points are known.
- ``RooflineProfile``: the roofline estimate for a model on an instance.
- ``EfficiencyProfile``: the calibrated efficiency model (``efficiency.py``) for the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from prfaas.planner.efficiency import Efficiency, efficiency_prefill_s
from prfaas.planner.model import PlannerModel
from prfaas.planner.roofline import Instance, prefill_s

FloatArray = npt.NDArray[np.float64]


class PrefillProfile(Protocol):
    def prefill_s(self, num_tokens: FloatArray) -> FloatArray: ...

    def kv_bytes(self, num_tokens: FloatArray) -> FloatArray: ...


@dataclass(frozen=True)
class TableProfile:
    num_tokens: tuple[float, ...]
    prefill_times_s: tuple[float, ...]
    kv_sizes_bytes: tuple[float, ...] | None = None
    fit: str = "poly"  # "poly" | "interp"
    degree: int = 2
    _time_coef: FloatArray = field(init=False, repr=False, compare=False)
    _kv_coef: FloatArray | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.num_tokens)
        if n < 2 or len(self.prefill_times_s) != n:
            raise ValueError("a profile needs >= 2 rows of (num_tokens, prefill_s)")
        if self.fit not in ("poly", "interp"):
            raise ValueError(f"fit must be 'poly' or 'interp', got {self.fit!r}")
        if self.fit == "poly" and not 0 <= self.degree < n:
            raise ValueError(f"degree must be in [0, {n - 1}] for {n} rows, got {self.degree}")
        if list(self.num_tokens) != sorted(set(self.num_tokens)):
            raise ValueError("profile rows must have strictly increasing num_tokens")
        x = np.asarray(self.num_tokens, dtype=np.float64)
        time_coef = np.zeros(1)
        if self.fit == "poly":
            time_coef = np.polyfit(x, np.asarray(self.prefill_times_s), self.degree)
        object.__setattr__(self, "_time_coef", time_coef)
        kv_coef = None
        if self.kv_sizes_bytes is not None:
            if len(self.kv_sizes_bytes) != n:
                raise ValueError("kv sizes must have one entry per row")
            kv_coef = np.polyfit(x, np.asarray(self.kv_sizes_bytes, dtype=np.float64), 1)
        object.__setattr__(self, "_kv_coef", kv_coef)

    def prefill_s(self, num_tokens: FloatArray) -> FloatArray:
        x = np.asarray(num_tokens, dtype=np.float64)
        if self.fit == "poly":
            return np.asarray(np.polyval(self._time_coef, x), dtype=np.float64)
        return _interp_extrapolate(x, self.num_tokens, self.prefill_times_s)

    def kv_bytes(self, num_tokens: FloatArray) -> FloatArray:
        if self._kv_coef is None:
            raise ValueError("this profile has no KV sizes")
        return np.asarray(np.polyval(self._kv_coef, np.asarray(num_tokens)), dtype=np.float64)


def _interp_extrapolate(x: FloatArray, xs: Sequence[float], ys: Sequence[float]) -> FloatArray:
    xp, yp = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    y = np.interp(x, xp, yp)
    lo_slope = (yp[1] - yp[0]) / (xp[1] - xp[0])
    hi_slope = (yp[-1] - yp[-2]) / (xp[-1] - xp[-2])
    y = np.where(x < xp[0], yp[0] + (x - xp[0]) * lo_slope, y)
    return np.asarray(np.where(x > xp[-1], yp[-1] + (x - xp[-1]) * hi_slope, y))


@dataclass(frozen=True)
class ScaledProfile:
    base: PrefillProfile
    scale: float
    offset_s: float
    kv_profile: PrefillProfile | None = None  # whose S_kv to use; defaults to base's

    @classmethod
    def fit_to(cls, base: PrefillProfile, anchors: Sequence[tuple[float, float]]) -> ScaledProfile:
        """Least-squares (a, b) with a T_base(l) + b = t at each anchor (l, t)."""
        if not anchors:
            raise ValueError("need at least one anchor")
        lengths = np.asarray([a[0] for a in anchors], dtype=np.float64)
        times = np.asarray([a[1] for a in anchors], dtype=np.float64)
        base_times = base.prefill_s(lengths)
        if len(anchors) == 1:
            return cls(base, float(times[0] / base_times[0]), 0.0)
        design = np.stack([base_times, np.ones_like(base_times)], axis=1)
        (scale, offset), *_ = np.linalg.lstsq(design, times, rcond=None)
        return cls(base, float(scale), float(offset))

    def prefill_s(self, num_tokens: FloatArray) -> FloatArray:
        return self.scale * self.base.prefill_s(num_tokens) + self.offset_s

    def kv_bytes(self, num_tokens: FloatArray) -> FloatArray:
        return (self.kv_profile or self.base).kv_bytes(num_tokens)


@dataclass(frozen=True)
class RooflineProfile:
    model: PlannerModel
    instance: Instance

    def prefill_s(self, num_tokens: FloatArray) -> FloatArray:
        x = np.atleast_1d(np.asarray(num_tokens, dtype=np.float64))
        times = [prefill_s(self.model, self.instance, float(n)) for n in x.ravel()]
        return np.asarray(times, dtype=np.float64).reshape(np.shape(num_tokens))

    def kv_bytes(self, num_tokens: FloatArray) -> FloatArray:
        x = np.atleast_1d(np.asarray(num_tokens, dtype=np.float64))
        sizes = [self.model.kv_bytes(round(float(n))) for n in x.ravel()]
        return np.asarray(sizes, dtype=np.float64).reshape(np.shape(num_tokens))


@dataclass(frozen=True)
class EfficiencyProfile:
    model: PlannerModel
    instance: Instance
    efficiency: Efficiency

    def prefill_s(self, num_tokens: FloatArray) -> FloatArray:
        x = np.atleast_1d(np.asarray(num_tokens, dtype=np.float64))
        times = [
            efficiency_prefill_s(self.model, self.instance, self.efficiency, float(n))
            for n in x.ravel()
        ]
        return np.asarray(times, dtype=np.float64).reshape(np.shape(num_tokens))

    def kv_bytes(self, num_tokens: FloatArray) -> FloatArray:
        return RooflineProfile(self.model, self.instance).kv_bytes(num_tokens)
