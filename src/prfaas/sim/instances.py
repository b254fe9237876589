"""Simulated instances: the engine replaced by the profile's cost model.

Prefill: FCFS batches under a token budget (at least one request per batch; a prompt
longer than the budget runs alone). A batch takes the sum of its requests' T_prefill of
their incremental lengths: the profile was measured one request at a time, so no batching
speedup is assumed (the planner assumes none either). The batch's cache hits are taken
from the instance's own prefix cache when the batch starts.

Decode: continuous batching of up to BS_max requests at a constant step time (the
profile's ``step_s``): a request joins at the next step boundary, emits its first token one
step later and leaves after ``output_len`` steps; TPOT is the step time. Requests whose KV
has landed wait in FCFS order for a free slot.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from prfaas.router.types import InstanceView, Role
from prfaas.sim.cache import BlockLru
from prfaas.sim.curves import ScalarCurve
from prfaas.sim.request import SimRequest


@dataclass(frozen=True)
class PrefillCost:
    prefill_s: ScalarCurve  # T_prefill(l)
    kv_bytes: ScalarCurve | None  # S_kv(l); None: KV size unknown, hand-off is free


class PrefillInstance:
    role: Role = "prefill"

    def __init__(
        self,
        name: str,
        cluster: str,
        cost: PrefillCost,
        max_batch_tokens: int,
        cache: BlockLru,
        block_tokens: int,
    ) -> None:
        self.name, self.cluster, self.cost = name, cluster, cost
        self.max_batch_tokens, self.cache, self.block_tokens = max_batch_tokens, cache, block_tokens
        self.queue: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.queued_tokens = 0
        self.busy_s = 0.0
        self.pulls_inbound = 0  # routed here, cached prefix still crossing the link
        self.draining = False  # converting to decode: takes no new requests
        self.switch_pending = False

    def enqueue(self, request: SimRequest) -> None:
        self.queue.append(request)
        self.queued_tokens += _planned(request)

    def start_batch(self, now_s: float) -> float | None:
        """Take the next batch; return its duration (None if idle or already busy)."""
        if self.running or not self.queue:
            return None
        budget = self.max_batch_tokens
        duration = 0.0
        while self.queue and (not self.running or _planned(self.queue[0]) <= budget):
            request = self.queue.popleft()
            self.queued_tokens -= _planned(request)
            hit = self.cache.hit_blocks(request.hash_ids) * self.block_tokens
            request.cached_tokens = min(hit, request.prompt_len - 1)
            request.prefill_start_s = now_s
            budget -= request.incremental_tokens
            duration += self.cost.prefill_s(request.incremental_tokens)
            self.running.append(request)
        self.busy_s += duration
        return duration

    def finish_batch(self, now_s: float) -> list[SimRequest]:
        batch, self.running = self.running, []
        for request in batch:
            request.prefill_end_s = now_s
            self.cache.insert(request.hash_ids)
        return batch

    @property
    def idle(self) -> bool:
        return not self.queue and not self.running and self.pulls_inbound == 0

    def view(self) -> InstanceView:
        load = len(self.queue) + len(self.running) + self.pulls_inbound
        return InstanceView(
            self.name, self.cluster, "prefill", load, self.queued_tokens, not self.draining
        )


def _planned(request: SimRequest) -> int:
    """Incremental tokens the router expected (the real hit is known when the batch starts)."""
    assert request.decision is not None
    return request.decision.incremental_tokens


class DecodeInstance:
    role: Role = "decode"

    def __init__(self, name: str, cluster: str, max_batch_size: int, step_s: float) -> None:
        self.name, self.cluster = name, cluster
        self.max_batch_size, self.step_s = max_batch_size, step_s
        self.active = 0
        self.waiting: deque[SimRequest] = deque()
        self.inbound = 0  # routed here, KV not landed yet
        self.slot_s = 0.0  # integral of occupied slots over time (for utilization)
        self.draining = False  # converting to prefill: takes no new requests
        self.switch_pending = False

    def admit(self, now_s: float) -> list[tuple[float, SimRequest]]:
        """Start waiting requests while slots are free; return (finish time, request)."""
        started = []
        while self.waiting and self.active < self.max_batch_size:
            request = self.waiting.popleft()
            join_s = math.ceil(now_s / self.step_s - 1e-9) * self.step_s
            request.first_token_s = join_s + self.step_s
            request.tpot_s = self.step_s
            finish_s = join_s + max(request.output_len, 1) * self.step_s
            self.active += 1
            self.slot_s += finish_s - join_s
            started.append((finish_s, request))
        return started

    @property
    def idle(self) -> bool:
        return self.active == 0 and not self.waiting and self.inbound == 0

    def view(self) -> InstanceView:
        load = self.active + len(self.waiting) + self.inbound
        return InstanceView(self.name, self.cluster, "decode", load, 0, not self.draining)
