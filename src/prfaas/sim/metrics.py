"""What a run measured: per-request outcomes, time series, and the summary figures.

Measured requests are those arriving in [warmup_s, duration_s). A request without a first
token when the run stops (queues never drained) counts as an SLO miss and as an infinite
TTFT in the percentiles (reported as null). SLO attainment: first token within
``ttft_slo_s`` and TPOT within ``tpot_slo_s``. Cache hit rate: cached prompt tokens over
all prompt tokens. Utilization: busy time over capacity time (prefill instances) and
occupied slot time over slot capacity (decode), both averaged over the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from prfaas.sim.instances import DecodeInstance, PrefillInstance
from prfaas.sim.link import SimLink
from prfaas.sim.request import SimRequest
from prfaas.sim.topology import SimFleet


@dataclass
class Series:
    time_s: list[float] = field(default_factory=list)
    egress_gbps: list[float] = field(default_factory=list)
    link_capacity_gbps: list[float] = field(default_factory=list)
    queue_prfaas: list[int] = field(default_factory=list)  # requests waiting for prefill
    queue_pd_p: list[int] = field(default_factory=list)
    queue_decode: list[int] = field(default_factory=list)  # KV landed, waiting for a slot
    transfers_egress: list[int] = field(default_factory=list)  # KV flows on PrfaaS -> PD
    threshold_tokens: list[float] = field(default_factory=list)
    pd_prefill_instances: list[int] = field(default_factory=list)
    # instantaneous: share of the stage's instances mid-batch / of decode slots occupied
    busy_prfaas: list[float] = field(default_factory=list)
    busy_pd_p: list[float] = field(default_factory=list)
    busy_decode: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class RunResult:
    summary: dict[str, Any]
    series: Series
    requests: list[SimRequest]  # measured requests, in arrival order

    def ttfts_s(self) -> list[float]:
        """TTFT per measured request; ``inf`` where no first token came."""
        return [r.ttft_s if r.ttft_s is not None else math.inf for r in self.requests]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of an unsorted list; nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class RunConfig:
    duration_s: float  # arrivals stop here
    warmup_s: float = 0.0  # arrivals before this are simulated but not measured
    drain_limit_s: float = 600.0  # after the last arrival, simulate at most this long
    ttft_slo_s: float = 30.0
    tpot_slo_s: float = 0.025
    sample_interval_s: float = 10.0
    role_switch_drain_s: float = 30.0


class Metrics:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.measured: list[SimRequest] = []
        self.series = Series()
        self.role_changes: list[tuple[float, str, str]] = []
        self._egress_sent = 0.0

    def arrived(self, request: SimRequest) -> None:
        if self.config.warmup_s <= request.arrival_s < self.config.duration_s:
            self.measured.append(request)

    def sample(
        self, now_s: float, fleet: SimFleet, link: SimLink | None, threshold_tokens: float
    ) -> None:
        """One sample of the series; ``link`` is the PrfaaS → PD link, if any."""
        s = self.series
        s.time_s.append(now_s)
        if link is not None:
            sent = link.bytes_sent - self._egress_sent
            self._egress_sent = link.bytes_sent
            s.egress_gbps.append(sent * 8 / 1e9 / self.config.sample_interval_s)
            s.link_capacity_gbps.append(link.capacity_gbps)
            s.transfers_egress.append(len(link.flows))
        queues = {"prfaas": 0, "pd": 0}
        busy = {"prfaas": 0, "pd": 0}
        count = {"prfaas": 0, "pd": 0}
        decode_wait, active, slots = 0, 0, 0
        kinds = {c.name: c.kind for c in fleet.clusters()}
        for inst in fleet.by_name.values():
            if isinstance(inst, PrefillInstance):
                kind = kinds[inst.cluster]
                queues[kind] += len(inst.queue)
                busy[kind] += bool(inst.running)
                count[kind] += 1
            else:
                decode_wait += len(inst.waiting)
                active, slots = active + inst.active, slots + inst.max_batch_size
        s.queue_prfaas.append(queues["prfaas"])
        s.queue_pd_p.append(queues["pd"])
        s.queue_decode.append(decode_wait)
        s.busy_prfaas.append(busy["prfaas"] / max(count["prfaas"], 1))
        s.busy_pd_p.append(busy["pd"] / max(count["pd"], 1))
        s.busy_decode.append(active / max(slots, 1))
        pd_prefill = count["pd"]
        s.threshold_tokens.append(threshold_tokens)
        s.pd_prefill_instances.append(pd_prefill)

    def result(self, policy: str, now_s: float, fleet: SimFleet) -> RunResult:
        c, reqs = self.config, self.measured
        ttfts = [r.ttft_s if r.ttft_s is not None else math.inf for r in reqs]
        finite = [t for t in ttfts if math.isfinite(t)]
        ok = sum(
            1
            for r, t in zip(reqs, ttfts, strict=True)
            if t <= c.ttft_slo_s and r.tpot_s <= c.tpot_slo_s + 1e-12
        )
        window_s = max(c.duration_s - c.warmup_s, 1e-9)
        prompt = sum(r.prompt_len for r in reqs)
        offloaded = sum(1 for r in reqs if r.decision is not None and r.decision.path == "prfaas")
        s = self.series
        summary: dict[str, Any] = {
            "policy": policy,
            "requests": len(reqs),
            "completed": sum(1 for r in reqs if r.finish_s >= 0),
            "throughput_rps": sum(1 for r in reqs if r.finish_s >= 0) / window_s,
            "ttft_mean_s": _finite(sum(ttfts) / len(ttfts)) if ttfts else None,
            "ttft_p50_s": _finite(percentile(ttfts, 50)),
            "ttft_p90_s": _finite(percentile(ttfts, 90)),
            "ttft_p99_s": _finite(percentile(ttfts, 99)),
            "ttft_max_finite_s": max(finite, default=None),
            "tpot_mean_s": sum(r.tpot_s for r in reqs) / len(reqs) if reqs else None,
            "slo_attainment": ok / len(reqs) if reqs else None,
            "offload_fraction": offloaded / len(reqs) if reqs else None,
            "cache_hit_rate": sum(r.cached_tokens for r in reqs) / prompt if prompt else 0.0,
            "prefix_pulls": sum(1 for r in reqs if r.decision and r.decision.pull_from),
            "egress_mean_gbps": sum(s.egress_gbps) / len(s.egress_gbps) if s.egress_gbps else 0.0,
            "egress_max_gbps": max(s.egress_gbps, default=0.0),
            "queue_max": {
                "prfaas": max(s.queue_prfaas, default=0),
                "pd_p": max(s.queue_pd_p, default=0),
                "decode": max(s.queue_decode, default=0),
            },
            "utilization": _utilization(now_s, fleet),
            "role_changes": [list(x) for x in self.role_changes],
        }
        return RunResult(summary, s, reqs)


def _utilization(now_s: float, fleet: SimFleet) -> dict[str, float]:
    elapsed = max(now_s, 1e-9)
    busy: dict[str, float] = {}
    capacity: dict[str, float] = {}
    kinds = {c.name: c.kind for c in fleet.clusters()}
    for inst in fleet.by_name.values():
        if isinstance(inst, DecodeInstance):
            key, used, cap = "decode", inst.slot_s, inst.max_batch_size * elapsed
        else:
            key = "prfaas_prefill" if kinds[inst.cluster] == "prfaas" else "pd_prefill"
            used, cap = inst.busy_s, elapsed
        busy[key] = busy.get(key, 0.0) + used
        capacity[key] = capacity.get(key, 0.0) + cap
    return {k: min(busy[k] / capacity[k], 1.0) for k in busy}
