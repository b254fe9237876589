"""A link between two clusters: a capacity (which may change), an RTT, and fair sharing.

Flows share the capacity max-min fairly (water-filling): a flow limited by its own cap
(a prefill still producing its KV) takes only its cap, the rest is split equally among
the others. Per-layer pipelining: a flow starts when its prefill starts, capped at the rate
the prefill emits the first ``L - 1`` of ``L`` layers (``bytes * (L-1)/L / prefill_s``);
when the prefill ends the cap lifts, so the last layer (and any lag) goes at the fair
share. The data lands ``rtt_ms / 2`` after its last byte leaves.

Rates are recomputed at every change (flow start, producer done, flow end, capacity
change); between changes every rate is constant, so bytes advance exactly. A pending
completion check carries the link's version and is ignored if anything changed since.

What the control loop may know of a link is what its sender measures
(``transfer.capacity.CapacityEstimator``, fed here as the live sender feeds it): bytes sent,
and whether some flow is held back by the link (backlogged) rather than by its producer.
``measure`` gives that; the true ``capacity_gbps`` stays inside the simulation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prfaas.planner.units import gbps_to_bytes_per_s
from prfaas.router.link_state import LinkSample
from prfaas.transfer.capacity import CapacityEstimator

_EPS_BYTES = 1e-3
_EPS_S = 1e-9  # float time resolution: a flow this close to its end is done


def _finished(f: Flow) -> bool:
    rate = f.rate_bytes_per_s
    return f.remaining_bytes <= _EPS_BYTES or (rate > 0 and f.remaining_bytes / rate <= _EPS_S)


@dataclass(eq=False)
class Flow:
    total_bytes: float
    on_done: Callable[[float], None]  # called with the landing time
    cap_bytes_per_s: float | None = None  # None: only the fair share limits it
    remaining_bytes: float = field(init=False)
    rate_bytes_per_s: float = 0.0

    def __post_init__(self) -> None:
        self.remaining_bytes = self.total_bytes


class SimLink:
    def __init__(self, name: str, src: str, dst: str, capacity_gbps: float, rtt_ms: float) -> None:
        self.name, self.src, self.dst = name, src, dst
        self.capacity_gbps, self.rtt_ms = capacity_gbps, rtt_ms
        self.cap_gbps = capacity_gbps  # the configured cap: what an operator knows
        self.flows: list[Flow] = []
        self.bytes_sent = 0.0  # cumulative, for egress metrics
        self.version = 0
        self._last_s = 0.0
        self._estimator = CapacityEstimator()
        self._sent_at_measure = 0.0
        self._measured_s = 0.0

    def add(self, flow: Flow, now_s: float) -> float | None:
        self._advance(now_s)
        self.flows.append(flow)
        return self._reallocate(now_s)

    def lift_cap(self, flow: Flow, now_s: float) -> float | None:
        self._advance(now_s)
        flow.cap_bytes_per_s = None
        return self._reallocate(now_s)

    def set_capacity(self, capacity_gbps: float, now_s: float) -> float | None:
        self._advance(now_s)
        self.capacity_gbps = capacity_gbps
        return self._reallocate(now_s)

    def complete(self, now_s: float) -> tuple[list[Flow], float | None]:
        """Flows finished by ``now_s`` and the time of the next check (None: idle)."""
        self._advance(now_s)
        done = [f for f in self.flows if _finished(f)]
        self.flows = [f for f in self.flows if not _finished(f)]
        return done, self._reallocate(now_s)

    def measure(self, now_s: float) -> LinkSample:
        """The sender's view since the last ``measure``: rate, capacity estimate, busy share."""
        self._advance(now_s)
        self._estimator.update(now_s, self.bytes_sent, self._backlogged())
        estimate = self._estimator.estimate(now_s, self.cap_gbps)
        span_s = now_s - self._measured_s
        rate = (self.bytes_sent - self._sent_at_measure) * 8 / 1e9 / span_s if span_s > 0 else 0.0
        self._sent_at_measure, self._measured_s = self.bytes_sent, now_s
        return LinkSample(rate, estimate.capacity_gbps, estimate.busy_fraction)

    def _backlogged(self) -> bool:
        """Some flow has bytes waiting that the link, not its producer, holds back."""
        return any(
            f.cap_bytes_per_s is None or f.rate_bytes_per_s < f.cap_bytes_per_s * (1 - 1e-9)
            for f in self.flows
        )

    def _advance(self, now_s: float) -> None:
        dt = now_s - self._last_s
        if dt > 0:
            for f in self.flows:
                sent = min(f.rate_bytes_per_s * dt, f.remaining_bytes)
                f.remaining_bytes -= sent
                self.bytes_sent += sent
        self._last_s = now_s

    def _reallocate(self, now_s: float) -> float | None:
        """Water-fill the capacity; return when the first flow will finish."""
        self.version += 1
        capacity = gbps_to_bytes_per_s(self.capacity_gbps)
        rates = water_fill(capacity, [f.cap_bytes_per_s for f in self.flows])
        for f, rate in zip(self.flows, rates, strict=True):
            f.rate_bytes_per_s = rate
        self._estimator.update(now_s, self.bytes_sent, self._backlogged())
        finish = [
            now_s + f.remaining_bytes / f.rate_bytes_per_s
            for f in self.flows
            if f.rate_bytes_per_s > 0
        ]
        return min(finish) if finish else None


def water_fill(capacity: float, caps: list[float | None]) -> list[float]:
    """Max-min fair rates for flows with optional caps (the rule ``SimLink`` applies)."""
    limits = [float("inf") if cap is None else cap for cap in caps]
    order = sorted(range(len(caps)), key=lambda i: limits[i])
    rates = [0.0] * len(caps)
    remaining = capacity
    for k, i in enumerate(order):
        share = remaining / (len(order) - k)
        rates[i] = min(limits[i], share)
        remaining -= rates[i]
    return rates
