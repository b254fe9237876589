"""Cluster gauges on the gateway's /metrics: the threshold, per-instance queue depth and
health, KV transfers per link (bytes, outcomes), link goodput, egress, capacity estimate and
backlogged share as the sending instances measured them (their heartbeats' ``LinkReport``s),
and local-prefill fallbacks."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

from prfaas.gateway.fleet import WorkerFleet
from prfaas.gateway.metrics import GatewayMetrics
from prfaas.messages import LinkReport, PrefillResult, PullResult
from prfaas.router.redis_index import RedisKvIndex
from prfaas.router.types import RouteDecision


class ClusterMetrics:
    def __init__(self, metrics: GatewayMetrics, fleet: WorkerFleet, router: Any) -> None:
        r = metrics.registry
        self.fleet, self.router = fleet, router
        self.threshold = Gauge("prfaas_threshold_tokens", "Routing threshold t", registry=r)
        self.queue_depth = Gauge(
            "prfaas_instance_queue_depth",
            "Waiting + running requests",
            ["instance", "cluster", "role"],
            registry=r,
        )
        self.healthy = Gauge(
            "prfaas_instance_healthy", "1 if heartbeats arrive", ["instance"], registry=r
        )
        self.fallbacks = Gauge(
            "prfaas_instance_kv_fallbacks",
            "KV hand-offs this decode instance prefilled locally instead",
            ["instance"],
            registry=r,
        )
        self.kv_bytes = Counter(
            "prfaas_kv_transfer_bytes",
            "KV bytes delivered (before the codec)",
            ["link"],
            registry=r,
        )
        self.transfers = Counter(
            "prfaas_kv_transfers", "KV transfers by outcome", ["link", "outcome"], registry=r
        )
        self.goodput = Gauge(
            "prfaas_link_goodput_gbps",
            "Wire goodput of KV transfers out of a cluster, as its sending instances measure it",
            ["link"],
            registry=r,
        )
        self.egress = Gauge(
            "prfaas_link_egress_gbps",
            "KV bytes on the wire per second out of a cluster, as its instances measure it",
            ["link"],
            registry=r,
        )
        self.capacity = Gauge(
            "prfaas_link_capacity_gbps",
            "Link capacity out of a cluster as its senders measure it (goodput while "
            "backlogged, at most the cap; 0: stalled); absent until measured",
            ["link"],
            registry=r,
        )
        self.busy = Gauge(
            "prfaas_link_busy_fraction",
            "Share of the last window the busiest sender out of a cluster had a backlog",
            ["link"],
            registry=r,
        )
        self.wire_bytes = Gauge(
            "prfaas_link_wire_bytes",
            "KV bytes put on the wire out of a cluster since its instances started (their reports)",
            ["link"],
            registry=r,
        )
        self.routes = Counter("prfaas_routes", "Routing decisions by path", ["path"], registry=r)
        self.pulls = Counter(
            "prfaas_cache_pulls",
            "Cross-cluster cache pulls (abundant mode) by source cluster and outcome",
            ["source", "outcome"],
            registry=r,
        )
        self.pulled_tokens = Counter(
            "prfaas_cache_pulled_tokens", "Prefix tokens landed by cache pulls", registry=r
        )
        metrics.add_scrape_hook(self.refresh)

    def refresh(self) -> None:
        self.threshold.set(self.router.state.threshold_tokens)
        for name, rec in self.fleet.workers.items():
            self.queue_depth.labels(name, rec.info.cluster, rec.info.role).set(
                rec.num_waiting + rec.num_running
            )
            self.healthy.labels(name).set(1.0 if self.fleet.healthy(name) else 0.0)
            self.fallbacks.labels(name).set(rec.fallbacks)
        for cluster in self.fleet.clusters():  # labelled by source cluster, as transfers are
            reports = link_reports(self.fleet, cluster.name)
            if reports:
                self.goodput.labels(cluster.name).set(sum(r.goodput_gbps for r in reports))
                self.egress.labels(cluster.name).set(sum(r.rate_gbps for r in reports))
                self.wire_bytes.labels(cluster.name).set(sum(r.bytes_sent for r in reports))
                self.busy.labels(cluster.name).set(max(r.busy_fraction for r in reports))
                measured = [r.capacity_gbps for r in reports if r.capacity_gbps is not None]
                if measured:
                    self.capacity.labels(cluster.name).set(sum(measured))

    def on_prefill(self, decision: RouteDecision, result: PrefillResult) -> None:
        link = decision.prefill_cluster
        self.routes.labels(decision.path).inc()
        self.transfers.labels(link, "ok" if result.ok else "failed").inc()
        if result.ok:
            self.kv_bytes.labels(link).inc(result.kv_bytes)

    def on_pull(self, decision: RouteDecision, result: PullResult) -> None:
        self.pulls.labels(decision.pull_from or "", "ok" if result.ok else "failed").inc()
        if result.ok:
            self.pulled_tokens.inc(result.cached_tokens)


def add_kv_index_metrics(metrics: GatewayMetrics, index: RedisKvIndex) -> None:
    """``prfaas_kv_index_up`` and ``prfaas_kv_index_errors_total`` for a shared kv index."""
    r = metrics.registry
    up = Gauge("prfaas_kv_index_up", "1 if the shared kv index answers", registry=r)
    errors = Counter("prfaas_kv_index_errors", "Shared kv index calls that failed", registry=r)
    seen = [0]

    def refresh() -> None:
        up.set(1.0 if index.up else 0.0)
        errors.inc(index.errors - seen[0])
        seen[0] = index.errors

    metrics.add_scrape_hook(refresh)


def link_reports(fleet: WorkerFleet, cluster: str) -> list[LinkReport]:
    """The newest link report of every sending instance of ``cluster``."""
    return [
        report
        for r in fleet.workers.values()
        if r.info.cluster == cluster
        for report in r.links.values()
    ]
