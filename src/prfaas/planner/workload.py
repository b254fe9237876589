"""Incremental prefill length distributions: what the throughput model integrates over.

A distribution answers, for a batch of thresholds t: p = P(L > t), l_long = E[L | L > t] and
l_short = E[L | L <= t] (NaN where the condition has probability 0), plus the mean. L is the
*incremental* length: prompt tokens not already in a prefix cache.

- ``TruncatedLogNormal``: ln L ~ N(mu, sigma^2) conditioned on L in [min_tokens, max_tokens];
  closed form via partial expectations E[L; L <= x] = e^{mu + sigma^2/2} Phi(z(x) - sigma).
- ``EmpiricalLengths``: a sample (e.g. from a trace through the prefix-hit model in
  ``trace.py``); exact conditional means over the sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TailStats:
    offload_fraction: FloatArray  # p = P(L > t)
    l_long_tokens: FloatArray  # E[L | L > t]
    l_short_tokens: FloatArray  # E[L | L <= t]


class LengthDistribution(Protocol):
    @property
    def mean_tokens(self) -> float: ...

    @property
    def min_tokens(self) -> float: ...

    @property
    def max_tokens(self) -> float: ...

    def tail_stats(self, thresholds: FloatArray) -> TailStats: ...


def _normal_cdf(z: FloatArray) -> FloatArray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return np.asarray(0.5 * (1.0 + erf(np.asarray(z) / math.sqrt(2.0))), dtype=np.float64)


def _split(
    below_mass: FloatArray, below_sum: FloatArray, total_mass: float, total_sum: float
) -> TailStats:
    above_mass = total_mass - below_mass
    with np.errstate(invalid="ignore", divide="ignore"):
        l_short = np.where(below_mass > 0, below_sum / below_mass, np.nan)
        l_long = np.where(above_mass > 0, (total_sum - below_sum) / above_mass, np.nan)
    return TailStats(
        offload_fraction=np.clip(above_mass / total_mass, 0.0, 1.0),
        l_long_tokens=np.asarray(l_long, dtype=np.float64),
        l_short_tokens=np.asarray(l_short, dtype=np.float64),
    )


@dataclass(frozen=True)
class TruncatedLogNormal:
    mu: float
    sigma: float
    min_tokens: float
    max_tokens: float

    def __post_init__(self) -> None:
        if self.sigma <= 0:
            raise ValueError("sigma must be > 0")
        if not 0 < self.min_tokens < self.max_tokens:
            raise ValueError("need 0 < min_tokens < max_tokens")

    def _mass_and_sum_below(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Unnormalized P(L <= x) and E[L; L <= x] over the truncation interval."""
        x = np.clip(np.asarray(x, dtype=np.float64), self.min_tokens, self.max_tokens)
        z = (np.log(x) - self.mu) / self.sigma
        z_lo = (math.log(self.min_tokens) - self.mu) / self.sigma
        scale = math.exp(self.mu + self.sigma**2 / 2)
        lo = np.array([z_lo])
        mass = _normal_cdf(z) - _normal_cdf(lo)[0]
        partial = scale * (_normal_cdf(z - self.sigma) - _normal_cdf(lo - self.sigma)[0])
        return mass, partial

    def _totals(self) -> tuple[float, float]:
        mass, partial = self._mass_and_sum_below(np.array([self.max_tokens]))
        return float(mass[0]), float(partial[0])

    @property
    def mean_tokens(self) -> float:
        mass, partial = self._totals()
        return partial / mass

    def tail_stats(self, thresholds: FloatArray) -> TailStats:
        mass, partial = self._mass_and_sum_below(thresholds)
        return _split(mass, partial, *self._totals())


@dataclass(frozen=True)
class EmpiricalLengths:
    lengths_tokens: tuple[int, ...]
    _sorted: FloatArray = field(init=False, repr=False, compare=False)
    _cumsum: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.lengths_tokens:
            raise ValueError("need at least one length")
        ordered = np.sort(np.asarray(self.lengths_tokens, dtype=np.float64))
        object.__setattr__(self, "_sorted", ordered)
        object.__setattr__(self, "_cumsum", np.concatenate([[0.0], np.cumsum(ordered)]))

    @property
    def mean_tokens(self) -> float:
        return float(self._cumsum[-1] / len(self._sorted))

    @property
    def min_tokens(self) -> float:
        return float(self._sorted[0])

    @property
    def max_tokens(self) -> float:
        return float(self._sorted[-1])

    def tail_stats(self, thresholds: FloatArray) -> TailStats:
        below = np.searchsorted(self._sorted, np.asarray(thresholds), side="right")
        return _split(
            below.astype(np.float64),
            self._cumsum[below],
            float(len(self._sorted)),
            float(self._cumsum[-1]),
        )
