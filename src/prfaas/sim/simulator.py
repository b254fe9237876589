"""The simulator: the real router over simulated instances, links and traffic.

``run`` is the whole loop; the verbs below are what events do. A request's life: arrive →
route (the real ``Router``) → [pull a cached prefix across] → queue at its prefill
instance → prefill batch (its KV starts flowing, layer-pipelined, on the link to its decode
instance) → KV lands → wait for a decode slot → first token → last token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prfaas.router.control import Controller
from prfaas.router.instance_choice import InstanceChoice
from prfaas.router.kv_index import KvIndex
from prfaas.router.link_state import measured_link
from prfaas.router.policies import PathPolicy
from prfaas.router.router import Router, RouterConfig
from prfaas.router.types import LinkView, RouteRequest, RouterState
from prfaas.sim import event_kinds as ev
from prfaas.sim.events import EventQueue
from prfaas.sim.instances import DecodeInstance, PrefillInstance
from prfaas.sim.link import Flow, SimLink
from prfaas.sim.metrics import Metrics, RunConfig, RunResult
from prfaas.sim.request import SimRequest
from prfaas.sim.topology import FleetSpec, SimFleet

log = logging.getLogger(__name__)
__all__ = ["PolicySetup", "RunConfig", "Simulator"]


@dataclass(frozen=True)
class PolicySetup:
    name: str
    path_policy: PathPolicy
    router_config: RouterConfig
    state: RouterState
    controller: Controller | None = None  # None: static
    instance_choice: InstanceChoice | None = None  # None: the router's CHWBL


class Simulator:
    def __init__(
        self,
        fleet_spec: FleetSpec,
        policy: PolicySetup,
        workload: Iterable[SimRequest],
        config: RunConfig,
        on_progress: Callable[[float], None] | None = None,
    ) -> None:
        self.config, self.policy, self.on_progress = config, policy, on_progress
        self.now_s = 0.0
        self.queue = EventQueue()
        self.kv_index = KvIndex()
        self.fleet = SimFleet(fleet_spec, self.kv_index)
        self.router = Router(
            policy.router_config,
            policy.path_policy,
            self.fleet,
            self.kv_index,
            policy.state,
            policy.instance_choice,
        )
        self.links = {
            (s.src, s.dst): SimLink(f"{s.src}->{s.dst}", s.src, s.dst, s.capacity_gbps, s.rtt_ms)
            for s in fleet_spec.links
        }
        self.metrics = Metrics(config)
        self._workload: Iterator[SimRequest] = iter(workload)
        self._flows: dict[str, Flow] = {}
        self._in_flight = 0
        # (time, the controller's smoothed link view, the state it returned) per short tick
        self.control_trace: list[tuple[float, LinkView, RouterState]] = []
        kinds = {c.name: c.kind for c in fleet_spec.clusters}
        egress = [k for k in self.links if kinds[k[0]] == "prfaas" and kinds[k[1]] == "pd"]
        self.egress_key = egress[0] if egress else None

    def run(self) -> RunResult:
        self._schedule_start()
        horizon_s = self.config.duration_s + self.config.drain_limit_s
        while self.queue and self.queue.peek_time_s() <= horizon_s:
            self.now_s, event = self.queue.pop()
            event.fire(self)
            if self._in_flight == 0 and self.now_s >= self.config.duration_s:
                break  # arrivals over and every request finished
        return self.metrics.result(self.policy.name, self.now_s, self.fleet)

    # --- requests -------------------------------------------------------------------------

    def arrive(self, request: SimRequest) -> None:
        self._next_arrival()
        self._in_flight += 1
        self.metrics.arrived(request)
        route = RouteRequest(request.request_id, "default", request.prompt_len, request.hash_ids)
        request.decision = decision = self.router.route(route)
        self._decode(decision.decode_instance).inbound += 1
        if decision.pull_from is None:
            self._enqueue_prefill(request)
            return
        self._prefill(decision.prefill_instance).pulls_inbound += 1
        size = self._kv_size(decision.pull_from, decision.pull_tokens)
        landed = self._pusher(ev.PrefixPulled, request)
        self._send(decision.pull_from, decision.prefill_cluster, size, None, landed)

    def land_pull(self, request: SimRequest) -> None:
        assert request.decision is not None
        blocks = request.decision.pull_tokens // self.fleet.spec.block_tokens
        instance = self._prefill(request.decision.prefill_instance)
        instance.pulls_inbound -= 1
        instance.cache.insert(request.hash_ids[:blocks])
        self._enqueue_prefill(request)

    def finish_prefill(self, instance: PrefillInstance) -> None:
        for request in instance.finish_batch(self.now_s):
            self.router.prefill_finished(request.request_id)
            flow = self._flows.pop(request.request_id, None)
            if flow is not None:
                link = self._link_for(request)
                self._schedule_link(link, link.lift_cap(flow, self.now_s))
            else:  # a free hand-off: the KV is at the decode instance as the prefill ends
                self.land_kv(request)
        self._start_prefill(instance)
        self._maybe_retire(instance)

    def complete_flows(self, link: SimLink) -> None:
        done, next_s = link.complete(self.now_s)
        self._schedule_link(link, next_s)
        for flow in done:
            flow.on_done(self.now_s + link.rtt_ms / 2000.0)

    def land_kv(self, request: SimRequest) -> None:
        assert request.decision is not None
        request.kv_landed_s = self.now_s
        decode = self._decode(request.decision.decode_instance)
        decode.inbound -= 1
        decode.waiting.append(request)
        self._start_decode(decode)

    def finish_decode(self, instance: DecodeInstance, request: SimRequest) -> None:
        instance.active -= 1
        request.finish_s = self.now_s
        self._in_flight -= 1
        self._start_decode(instance)
        self._maybe_retire(instance)

    # --- links, control, roles, sampling ---------------------------------------------------

    def change_capacity(self, link: SimLink, capacity_gbps: float) -> None:
        log.info("t=%.0fs: link %s now %g Gbps", self.now_s, link.name, capacity_gbps)
        self._schedule_link(link, link.set_capacity(capacity_gbps, self.now_s))

    def short_control(self) -> None:
        controller = self.policy.controller
        assert controller is not None
        self.router.state = controller.short_tick(self.fleet.instances(), self._egress_view())
        self.control_trace.append((self.now_s, controller.egress, self.router.state))
        self.queue.push(self.now_s + controller.config.short_interval_s, ev.ShortControlTick())

    def long_control(self) -> None:
        controller = self.policy.controller
        assert controller is not None
        lengths = list(self.router.observed_lengths)
        self.router.state, changes = controller.long_tick(self.fleet.instances(), lengths)
        for change in changes:
            instance = self.fleet.by_name[change.instance]
            instance.draining = True
            log.info("t=%.0fs: draining %s to become %s", self.now_s, instance.name, change.to_role)
            self.metrics.role_changes.append((self.now_s, change.instance, change.to_role))
            self._maybe_retire(instance)
        self.queue.push(self.now_s + controller.config.long_interval_s, ev.LongControlTick())

    def switch_role(self, name: str) -> None:
        instance = self.fleet.convert(name)
        if isinstance(instance, PrefillInstance):
            self._start_prefill(instance)

    def sample(self) -> None:
        link = self.links.get(self.egress_key) if self.egress_key else None
        self.metrics.sample(self.now_s, self.fleet, link, self.router.state.threshold_tokens)
        if self.now_s < self.config.duration_s:
            self.queue.push(self.now_s + self.config.sample_interval_s, ev.Sample())

    # --- helpers ---------------------------------------------------------------------------

    def _schedule_start(self) -> None:
        self._next_arrival()
        self.queue.push(0.0, ev.Sample())
        for spec in self.fleet.spec.links:
            for at_s, gbps in spec.schedule:
                self.queue.push(at_s, ev.LinkCapacityChange(self.links[(spec.src, spec.dst)], gbps))
        controller = self.policy.controller
        if controller is not None:
            self.queue.push(controller.config.short_interval_s, ev.ShortControlTick())
            self.queue.push(controller.config.long_interval_s, ev.LongControlTick())

    def _next_arrival(self) -> None:
        request = next(self._workload, None)
        if request is not None:
            self.queue.push(request.arrival_s, ev.Arrival(request))
            if self.on_progress is not None:
                self.on_progress(request.arrival_s)

    def _enqueue_prefill(self, request: SimRequest) -> None:
        assert request.decision is not None
        instance = self._prefill(request.decision.prefill_instance)
        instance.enqueue(request)
        self._start_prefill(instance)

    def _start_prefill(self, instance: PrefillInstance) -> None:
        duration_s = instance.start_batch(self.now_s)
        if duration_s is None:
            return
        self.queue.push(self.now_s + duration_s, ev.PrefillDone(instance))
        kv_bytes = instance.cost.kv_bytes
        if kv_bytes is None:
            return  # KV size unknown: the hand-off is free (finish_prefill lands it)
        layers = self.fleet.spec.pipeline_layers
        for request in instance.running:
            size = kv_bytes(request.incremental_tokens)
            cap = size * (layers - 1) / layers / duration_s  # the last layer waits for the end
            landed = self._pusher(ev.KvLanded, request)
            link = self._link_for(request)
            self._flows[request.request_id] = self._send(link.src, link.dst, size, cap, landed)

    def _pusher(
        self, kind: type[ev.KvLanded] | type[ev.PrefixPulled], request: SimRequest
    ) -> Callable[[float], None]:
        return lambda time_s: self.queue.push(time_s, kind(request))

    def _send(
        self,
        src: str,
        dst: str,
        size_bytes: float,
        cap_bytes_per_s: float | None,
        on_done: Callable[[float], None],
    ) -> Flow:
        link = self.links[(src, dst)]
        flow = Flow(size_bytes, on_done, cap_bytes_per_s)
        self._schedule_link(link, link.add(flow, self.now_s))
        return flow

    def _kv_size(self, cluster: str, num_tokens: int) -> float:
        for instance in self.fleet.of(cluster, "prefill"):
            assert isinstance(instance, PrefillInstance)
            if instance.cost.kv_bytes is not None:
                return instance.cost.kv_bytes(num_tokens)
        return 0.0

    def _schedule_link(self, link: SimLink, next_s: float | None) -> None:
        if next_s is not None:
            self.queue.push(max(next_s, self.now_s), ev.LinkCheck(link, link.version))

    def _start_decode(self, instance: DecodeInstance) -> None:
        for finish_s, request in instance.admit(self.now_s):
            self.queue.push(finish_s, ev.DecodeDone(instance, request))

    def _maybe_retire(self, instance: PrefillInstance | DecodeInstance) -> None:
        """A draining instance that has finished its work switches role after the drain time."""
        if instance.draining and instance.idle and not instance.switch_pending:
            instance.switch_pending = True
            switch_s = self.now_s + self.config.role_switch_drain_s
            self.queue.push(switch_s, ev.RoleSwitched(instance.name))

    def _link_for(self, request: SimRequest) -> SimLink:
        assert request.decision is not None
        dst = self.fleet.by_name[request.decision.decode_instance].cluster
        return self.links[(request.decision.prefill_cluster, dst)]

    def _prefill(self, name: str) -> PrefillInstance:
        instance = self.fleet.by_name[name]
        assert isinstance(instance, PrefillInstance)
        return instance

    def _decode(self, name: str) -> DecodeInstance:
        instance = self.fleet.by_name[name]
        assert isinstance(instance, DecodeInstance)
        return instance

    def _egress_view(self) -> LinkView:
        """The PrfaaS → PD link as the live control loop sees it: its sender's measure
        (``SimLink.measure``) within the configured cap, never the true capacity."""
        assert self.egress_key is not None, "the adaptive policy needs a PrfaaS -> PD link"
        link = self.links[self.egress_key]
        return measured_link(link.src, link.dst, link.cap_gbps, [link.measure(self.now_s)])
