"""T(l), the seconds one instance takes to prefill l incremental tokens: the one model of
prefill time the router's instance choice, its pull costs (``types.PathCosts``), the
controller and the simulator share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from prfaas.router.inflight import QueuedWork

FIT_POINTS = 16  # even steps of a profile ``PrefillTimeModel.sampled`` fits on


@dataclass(frozen=True)
class PrefillTimeModel:
    """T(l) = a + b·l + c·l²: seconds one instance takes to prefill l incremental tokens."""

    a_s: float
    b_s_per_token: float
    c_s_per_token2: float = 0.0

    def __post_init__(self) -> None:
        if min(self.a_s, self.b_s_per_token, self.c_s_per_token2) < 0:
            raise ValueError(f"prefill time coefficients must be >= 0, got {self}")

    def seconds(self, num_tokens: int) -> float:
        return self.a_s + self.b_s_per_token * num_tokens + self.c_s_per_token2 * num_tokens**2

    def queued_s(self, work: QueuedWork) -> float:
        """Σ T(l_i) over the queued prefills (exact for this model)."""
        return (
            self.a_s * work.requests
            + self.b_s_per_token * work.tokens
            + self.c_s_per_token2 * work.tokens_squared
        )

    @classmethod
    def fit(cls, points: Sequence[tuple[float, float]]) -> PrefillTimeModel:
        """Least-squares quadratic through ``(num_tokens, prefill_s)`` points (>= 3 distinct
        lengths), coefficients clipped at 0 (a profile's T is increasing and convex)."""
        if len({x for x, _ in points}) < 3:
            raise ValueError("fitting T(l) = a + b·l + c·l² needs at least 3 distinct lengths")
        lengths, seconds = zip(*points, strict=True)
        c, b, a = (float(v) for v in np.polyfit(lengths, seconds, 2))  # as planner profiles
        return cls(max(a, 0.0), max(b, 0.0), max(c, 0.0))

    @classmethod
    def sampled(cls, prefill_s: Callable[[int], float], max_tokens: int) -> PrefillTimeModel:
        """``fit`` on a profile sampled at ``FIT_POINTS`` even steps up to ``max_tokens`` and
        at powers of two from 256 (short prompts are most of the traffic)."""
        lengths = sorted(
            {max_tokens * (k + 1) // FIT_POINTS for k in range(FIT_POINTS)}
            | {256 << k for k in range(12) if 256 << k < max_tokens}
        )
        return cls.fit([(float(n), prefill_s(n)) for n in lengths])
