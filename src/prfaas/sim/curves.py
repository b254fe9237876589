"""Scalar, numpy-free lookups of a planner profile for the simulator's hot path.

A ``PrefillProfile`` is vectorized numpy; calling it once per request costs microseconds
of overhead. ``ScalarCurve`` samples it once on a grid of ``step_tokens`` and interpolates
linearly (exact at grid points; the profiles are smooth, so the error is far below the
profile's own fit error), extrapolating along the last segment.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


class ScalarCurve:
    def __init__(
        self, fn: Callable[[FloatArray], FloatArray], max_tokens: int, step_tokens: int = 64
    ) -> None:
        self.step_tokens = step_tokens
        grid = np.arange(0, max_tokens + 2 * step_tokens, step_tokens, dtype=np.float64)
        self._values = [float(v) for v in fn(grid)]

    def __call__(self, num_tokens: float) -> float:
        pos = num_tokens / self.step_tokens
        i = min(int(pos), len(self._values) - 2)
        lo, hi = self._values[i], self._values[i + 1]
        return lo + (pos - i) * (hi - lo)
