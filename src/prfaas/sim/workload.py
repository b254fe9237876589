"""Workloads: the requests a run replays, generated lazily in arrival order.

- ``SyntheticWorkload``: Poisson arrivals whose rate may step up in bursts (on/off:
  ``Burst`` multiplies the rate inside a window) and log-normal prompt lengths truncated to
  [min, max] whose μ may drift linearly (``Drift``). Arrivals of a piecewise-constant rate
  are exact: at a rate boundary the exponential clock restarts (it is memoryless).
- ``TraceWorkload``: replay of a Mooncake trace (``planner/trace.py``), timestamps divided
  by ``speedup``, with its ``hash_ids`` feeding the prefix caches.
Both are seeded and deterministic.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prfaas.planner.trace import TraceRequest
from prfaas.sim.request import SimRequest


@dataclass(frozen=True)
class Burst:
    start_s: float
    end_s: float
    factor: float  # rate multiplier inside [start_s, end_s)


@dataclass(frozen=True)
class Drift:
    start_s: float
    end_s: float
    mu_to: float  # μ moves linearly from the workload's μ to this over [start_s, end_s]


@dataclass(frozen=True)
class SyntheticWorkload:
    rate_rps: float
    duration_s: float
    mu: float
    sigma: float
    min_tokens: int
    max_tokens: int
    output_tokens: int
    bursts: tuple[Burst, ...] = ()
    drift: Drift | None = None
    seed: int = 0

    def rate_at(self, time_s: float) -> float:
        factor = math.prod(b.factor for b in self.bursts if b.start_s <= time_s < b.end_s)
        return self.rate_rps * factor

    def mu_at(self, time_s: float) -> float:
        d = self.drift
        if d is None or time_s <= d.start_s:
            return self.mu
        frac = min((time_s - d.start_s) / max(d.end_s - d.start_s, 1e-9), 1.0)
        return self.mu + frac * (d.mu_to - self.mu)

    def __iter__(self) -> Iterator[SimRequest]:
        rng = random.Random(self.seed)
        edges = sorted({e for b in self.bursts for e in (b.start_s, b.end_s)})
        time_s, k = 0.0, 0
        while True:
            rate = self.rate_at(time_s)
            gap = rng.expovariate(rate) if rate > 0 else math.inf
            nxt = next((e for e in edges if e > time_s), math.inf)
            if time_s + gap >= nxt:  # the rate changes first: restart the clock there
                time_s = nxt
                if time_s >= self.duration_s:
                    return
                continue
            time_s += gap
            if time_s >= self.duration_s:
                return
            yield SimRequest(f"req-{k}", time_s, self._length(rng, time_s), self.output_tokens)
            k += 1

    def _length(self, rng: random.Random, time_s: float) -> int:
        mu = self.mu_at(time_s)
        while True:
            n = rng.lognormvariate(mu, self.sigma)
            if self.min_tokens <= n <= self.max_tokens:
                return max(int(n), 1)


@dataclass(frozen=True)
class TraceWorkload:
    requests: Sequence[TraceRequest]
    speedup: float = 1.0
    duration_s: float = math.inf

    def __iter__(self) -> Iterator[SimRequest]:
        ordered = sorted(self.requests, key=lambda r: r.timestamp_ms)
        for k, r in enumerate(ordered):
            arrival_s = r.timestamp_ms / 1000.0 / self.speedup
            if arrival_s >= self.duration_s:
                return
            yield SimRequest(
                f"req-{k}", arrival_s, max(r.input_length, 1), max(r.output_length, 1), r.hash_ids
            )
