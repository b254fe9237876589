"""The event queue: the one place the simulator's order of events is defined.

Events fire in ``(time_s, priority, seq)`` order: earlier time first; at equal times the
lower ``Priority`` first; at equal time and priority, the event scheduled first (``seq``
counts schedule calls). So a run is a pure function of its inputs and seed: no ordering
depends on object ids or hashing.

Priorities at one instant, and why: capacity changes before anything measures the link;
completions (link, prefill, decode) free resources before new work is admitted; arrivals
before the control loop looks; the sampler last, so it sees the instant's final state.
"""

from __future__ import annotations

import heapq
import itertools
from enum import IntEnum
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from prfaas.sim.instances import DecodeInstance, PrefillInstance
    from prfaas.sim.link import SimLink
    from prfaas.sim.request import SimRequest


class Verbs(Protocol):
    """What events do to the simulator (``Simulator`` implements it): one verb per event."""

    def arrive(self, request: SimRequest) -> None: ...
    def finish_prefill(self, instance: PrefillInstance) -> None: ...
    def complete_flows(self, link: SimLink) -> None: ...
    def land_kv(self, request: SimRequest) -> None: ...
    def land_pull(self, request: SimRequest) -> None: ...
    def finish_decode(self, instance: DecodeInstance, request: SimRequest) -> None: ...
    def change_capacity(self, link: SimLink, capacity_gbps: float) -> None: ...
    def switch_role(self, name: str) -> None: ...
    def short_control(self) -> None: ...
    def long_control(self) -> None: ...
    def sample(self) -> None: ...


class Priority(IntEnum):
    LINK_CHANGE = 0
    TRANSFER = 1
    DECODE = 2
    PREFILL = 3
    ROLE = 4
    ARRIVAL = 5
    CONTROL = 6
    SAMPLE = 7


class Event:
    """One thing that happens at one instant; ``fire`` applies it to the simulator."""

    priority: ClassVar[Priority]
    __slots__ = ()

    def fire(self, sim: Verbs) -> None:
        raise NotImplementedError


class EventQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Event]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, time_s: float, event: Event) -> None:
        heapq.heappush(self._heap, (time_s, event.priority, next(self._seq), event))

    def pop(self) -> tuple[float, Event]:
        time_s, _, _, event = heapq.heappop(self._heap)
        return time_s, event

    def peek_time_s(self) -> float:
        return self._heap[0][0]
