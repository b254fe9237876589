"""The link the controller sees, from what its senders measured: one rule for the live
loop (heartbeats' ``LinkReport``s) and the simulator (its links' own estimators).

Each sender reports its egress rate, its capacity estimate (goodput while backlogged, at
most its cap; None when it has not been backlogged lately) and the share of time it had a
backlog (``transfer/capacity.py``). The link's capacity is the senders' measured capacities
summed (concurrent backlogged senders split a shared link), at most the configured cap; with
no measurement, the cap. Utilization is the larger of rate over capacity and the busiest
sender's backlogged share, so a stalled link (backlogged, carrying nothing) reads as
congested, never idle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from prfaas.router.types import LinkView


class SenderMeasure(Protocol):
    @property
    def rate_gbps(self) -> float: ...

    @property
    def capacity_gbps(self) -> float | None: ...

    @property
    def busy_fraction(self) -> float: ...


@dataclass(frozen=True)
class LinkSample:
    """One sender's measure (the simulator's; live ones are ``messages.LinkReport``)."""

    rate_gbps: float
    capacity_gbps: float | None
    busy_fraction: float


def measured_link(
    src: str, dst: str, cap_gbps: float, senders: Sequence[SenderMeasure]
) -> LinkView:
    rate = sum(s.rate_gbps for s in senders)
    measured = [s.capacity_gbps for s in senders if s.capacity_gbps is not None]
    capacity = min(cap_gbps, sum(measured)) if measured else cap_gbps
    busy = max((s.busy_fraction for s in senders), default=0.0)
    if capacity > 0:
        utilization = max(rate / capacity, busy)
    else:
        utilization = 1.0 if busy > 0 or rate > 0 else 0.0
    return LinkView(src, dst, capacity, rate, utilization)
