"""A link's capacity as its sender can measure it: goodput while the link was backlogged.

The sender knows two things at every instant: how many bytes it has put on the wire, and
whether it has bytes waiting for the link (a backlog). Bytes sent while backlogged, over the
time spent backlogged, is what the link carries when asked for more than it gets: its
capacity. Time without a backlog says nothing about the link (an idle or compute-bound
sender is not a slow link), so it enters neither sum.

Over a sliding ``window_s``:
- ``capacity_gbps``: busy bytes over busy seconds, at most the configured cap; measured only
  when the window holds at least ``min_busy_s`` of backlog, else the last measurement for
  ``hold_s``, then None (unknown: the reader assumes the cap). A stalled link (backlogged,
  no bytes) measures 0.
- ``busy_fraction``: the share of the window the link was backlogged. A stalled link is
  busy, never idle: it reads as congested.

Plain Python on a caller's clock: the live ``LinkMonitor`` feeds it ``time.monotonic()``,
the simulator its event time, so both report the same quantity.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

WINDOW_S = 1.0
MIN_BUSY_S = 0.05
HOLD_S = 5.0  # short: a link that stopped queueing is no longer the bottleneck it was


@dataclass(frozen=True)
class CapacityEstimate:
    capacity_gbps: float | None  # None: no backlog seen for ``hold_s``
    busy_fraction: float  # in [0, 1]


class CapacityEstimator:
    def __init__(
        self, window_s: float = WINDOW_S, min_busy_s: float = MIN_BUSY_S, hold_s: float = HOLD_S
    ) -> None:
        if not 0 < min_busy_s < window_s:
            raise ValueError("need 0 < min_busy_s < window_s")
        self.window_s, self.min_busy_s, self.hold_s = window_s, min_busy_s, hold_s
        self._last_s: float | None = None
        self._last_bytes = 0.0
        self._backlogged = False
        self._busy_s = self._busy_bytes = 0.0  # cumulative
        # (time, busy seconds, busy bytes), cumulative, at most one per ``window_s / 100``.
        self._samples: collections.deque[tuple[float, float, float]] = collections.deque()
        self._measured: tuple[float, float] | None = None  # (time, gbps) of the last measure

    def update(self, now_s: float, bytes_sent: float, backlogged: bool) -> None:
        """``bytes_sent``: cumulative wire bytes; ``backlogged``: whether bytes wait for the
        link from now on. The interval since the last update counts in the state it had."""
        if self._last_s is None:
            self._last_s, self._last_bytes = now_s, bytes_sent
            self._samples.append((now_s, 0.0, 0.0))
        dt = max(now_s - self._last_s, 0.0)
        if self._backlogged:
            self._busy_s += dt
            self._busy_bytes += bytes_sent - self._last_bytes
        self._last_s, self._last_bytes, self._backlogged = now_s, bytes_sent, backlogged
        if now_s - self._samples[-1][0] >= self.window_s / 100:
            self._samples.append((now_s, self._busy_s, self._busy_bytes))
        while len(self._samples) > 2 and now_s - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        _, busy0, bytes0 = self._samples[0]
        if self._busy_s - busy0 >= self.min_busy_s:
            gbps = (self._busy_bytes - bytes0) * 8 / (self._busy_s - busy0) / 1e9
            self._measured = (now_s, gbps)

    def add_busy(self, seconds: float) -> None:
        """Busy time the sender learned of late (bytes it wrote waited in buffers on the way
        for this long): counted now, with no bytes of its own (they were counted as written)."""
        self._busy_s += seconds

    def estimate(self, now_s: float, cap_gbps: float | None) -> CapacityEstimate:
        """The estimate as of the last ``update`` (call it at ``now_s`` first)."""
        if self._last_s is None:
            return CapacityEstimate(None, 0.0)
        t0, busy0, _ = self._samples[0]
        span_s = max(now_s - t0, 1e-9)
        busy_s = self._busy_s - busy0
        capacity = None
        if self._measured is not None and now_s - self._measured[0] <= self.hold_s:
            capacity = self._measured[1] if cap_gbps is None else min(self._measured[1], cap_gbps)
        return CapacityEstimate(capacity, min(busy_s / span_s, 1.0))
