"""One small class per kind of event; each names the simulator verb it triggers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prfaas.sim.events import Event, Priority, Verbs

if TYPE_CHECKING:
    from prfaas.sim.instances import DecodeInstance, PrefillInstance
    from prfaas.sim.link import SimLink
    from prfaas.sim.request import SimRequest


class Arrival(Event):
    priority = Priority.ARRIVAL
    __slots__ = ("request",)

    def __init__(self, request: SimRequest) -> None:
        self.request = request

    def fire(self, sim: Verbs) -> None:
        sim.arrive(self.request)


class PrefillDone(Event):
    priority = Priority.PREFILL
    __slots__ = ("instance",)

    def __init__(self, instance: PrefillInstance) -> None:
        self.instance = instance

    def fire(self, sim: Verbs) -> None:
        sim.finish_prefill(self.instance)


class LinkCheck(Event):
    """A flow on ``link`` may have finished; stale if the link changed since scheduling."""

    priority = Priority.TRANSFER
    __slots__ = ("link", "version")

    def __init__(self, link: SimLink, version: int) -> None:
        self.link, self.version = link, version

    def fire(self, sim: Verbs) -> None:
        if self.version == self.link.version:
            sim.complete_flows(self.link)


class KvLanded(Event):
    priority = Priority.TRANSFER
    __slots__ = ("request",)

    def __init__(self, request: SimRequest) -> None:
        self.request = request

    def fire(self, sim: Verbs) -> None:
        sim.land_kv(self.request)


class PrefixPulled(Event):
    priority = Priority.TRANSFER
    __slots__ = ("request",)

    def __init__(self, request: SimRequest) -> None:
        self.request = request

    def fire(self, sim: Verbs) -> None:
        sim.land_pull(self.request)


class DecodeDone(Event):
    priority = Priority.DECODE
    __slots__ = ("instance", "request")

    def __init__(self, instance: DecodeInstance, request: SimRequest) -> None:
        self.instance, self.request = instance, request

    def fire(self, sim: Verbs) -> None:
        sim.finish_decode(self.instance, self.request)


class LinkCapacityChange(Event):
    priority = Priority.LINK_CHANGE
    __slots__ = ("capacity_gbps", "link")

    def __init__(self, link: SimLink, capacity_gbps: float) -> None:
        self.link, self.capacity_gbps = link, capacity_gbps

    def fire(self, sim: Verbs) -> None:
        sim.change_capacity(self.link, self.capacity_gbps)


class RoleSwitched(Event):
    priority = Priority.ROLE
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def fire(self, sim: Verbs) -> None:
        sim.switch_role(self.name)


class ShortControlTick(Event):
    priority = Priority.CONTROL
    __slots__ = ()

    def fire(self, sim: Verbs) -> None:
        sim.short_control()


class LongControlTick(Event):
    priority = Priority.CONTROL
    __slots__ = ()

    def fire(self, sim: Verbs) -> None:
        sim.long_control()


class Sample(Event):
    priority = Priority.SAMPLE
    __slots__ = ()

    def fire(self, sim: Verbs) -> None:
        sim.sample()
