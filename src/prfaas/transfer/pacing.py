"""Egress pacing: one token bucket per link, shared by every transfer on it.

Writers ask for bytes before sending them. When the bucket is empty, waiting requests are
served earliest deadline first; among equal deadlines (e.g. none), the transfer that has
been served the fewest bytes goes first, which shares the cap evenly. A transfer joining
late starts at the least-served active transfer's count, so it neither starves the others
nor is starved. The cap can change at any time; waiters re-evaluate immediately.

Invariant: ``_tokens`` may go negative by at most one grant (debt is repaid before the next
grant), so over any interval the bytes granted are <= rate * interval + burst + one grant.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass, field

GRANT_MAX_BYTES = 256 << 10  # writers split frames into grants no larger than this


@dataclass(order=True)
class _Waiter:
    deadline_s: float  # monotonic; inf when the transfer has none
    served_bytes: int
    seq: int
    flow: Flow = field(compare=False)


class Flow:
    """One transfer's account at the pacer."""

    def __init__(self, pacer: Pacer, deadline_s: float | None, served_bytes: int) -> None:
        self.pacer = pacer
        self.deadline_s = math.inf if deadline_s is None else deadline_s
        self.served_bytes = served_bytes

    def acquire(self, num_bytes: int) -> None:
        self.pacer.acquire(self, num_bytes)

    def close(self) -> None:
        self.pacer.unregister(self)


class Pacer:
    """Token bucket shared by the flows of one link (rate in Gbit/s, 10^9 bits per second)."""

    def __init__(self, rate_gbps: float | None, burst_s: float = 0.005) -> None:
        self._cond = threading.Condition()
        self._burst_s = burst_s
        self._rate_bps = 0.0  # bytes per second; 0 means uncapped
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._flows: set[Flow] = set()
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self.set_rate_gbps(rate_gbps)

    @property
    def rate_gbps(self) -> float | None:
        return self._rate_bps * 8 / 1e9 if self._rate_bps else None

    def set_rate_gbps(self, rate_gbps: float | None) -> None:
        with self._cond:
            self._refill()
            self._rate_bps = (rate_gbps or 0.0) * 1e9 / 8
            self._tokens = min(self._tokens, self._burst_bytes())
            self._cond.notify_all()

    def register(self, deadline_s: float | None = None) -> Flow:
        """A new flow; ``deadline_s`` is a time.monotonic() instant (EDF priority)."""
        with self._cond:
            served = min((f.served_bytes for f in self._flows), default=0)
            flow = Flow(self, deadline_s, served)
            self._flows.add(flow)
            return flow

    def unregister(self, flow: Flow) -> None:
        with self._cond:
            self._flows.discard(flow)
            self._cond.notify_all()

    def acquire(self, flow: Flow, num_bytes: int) -> None:
        """Block until ``num_bytes`` (<= GRANT_MAX_BYTES) may be sent for ``flow``."""
        with self._cond:
            if not self._rate_bps:
                flow.served_bytes += num_bytes
                return
            waiter = _Waiter(flow.deadline_s, flow.served_bytes, next(self._seq), flow)
            self._waiters.append(waiter)
            try:
                while True:
                    self._refill()
                    if not self._rate_bps:
                        break
                    if self._tokens >= 0 and min(self._waiters) is waiter:
                        self._tokens -= num_bytes
                        break
                    wait_s = -self._tokens / self._rate_bps if self._tokens < 0 else None
                    self._cond.wait(wait_s)
            finally:
                self._waiters.remove(waiter)
                self._cond.notify_all()
            flow.served_bytes += num_bytes

    def _burst_bytes(self) -> float:
        return max(self._rate_bps * self._burst_s, GRANT_MAX_BYTES)

    def _refill(self) -> None:
        now = time.monotonic()
        if self._rate_bps:
            self._tokens = min(
                self._tokens + (now - self._stamp) * self._rate_bps, self._burst_bytes()
            )
        self._stamp = now
