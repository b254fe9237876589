"""Regions on the gateway's /metrics and /status: each region's state (``serving``, ``full``,
``down``: ``router.regions``), healthy decode instances and requests in flight, and the
requests routed to it (by the tenant's first region: a different one is a failover) or
refused, counted from the audit log's request records."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

from prfaas.gateway.fleet import WorkerFleet
from prfaas.gateway.metrics import GatewayMetrics
from prfaas.router.regions import RegionMap
from prfaas.transfer.audit import RequestRecord

STATES = ("serving", "full", "down")


def region_status(regions: RegionMap, fleet: WorkerFleet) -> list[dict[str, Any]]:
    """One entry per region with a PD cluster, in the deployment's order."""
    instances = fleet.instances()
    out = []
    for region in regions.order:
        pd = regions.pd_cluster[region]
        decodes = [i for i in instances if i.cluster == pd and i.role == "decode"]
        out.append(
            {
                "name": region,
                "pd_cluster": pd,
                "prfaas_clusters": sorted(regions.offload.get(pd, ())),
                "state": regions.state(region, instances),
                "healthy_decode": sum(i.healthy for i in decodes),
                "decode": len(decodes),
                "inflight": sum(fleet.inflight.get(i.name, 0) for i in decodes),
            }
        )
    return out


class RegionMetrics:
    def __init__(self, metrics: GatewayMetrics, regions: RegionMap, fleet: WorkerFleet) -> None:
        r = metrics.registry
        self.regions, self.fleet = regions, fleet
        self.state = Gauge(
            "prfaas_region_state",
            "1 for the region's state (serving, full: every decode instance at its in-flight "
            "cap, down: no healthy decode instance), 0 for the others",
            ["region", "state"],
            registry=r,
        )
        self.healthy_decode = Gauge(
            "prfaas_region_healthy_decode_instances",
            "Healthy decode instances of the region's PD cluster",
            ["region"],
            registry=r,
        )
        self.inflight = Gauge(
            "prfaas_region_inflight",
            "Requests this gateway runs on the region's decode instances",
            ["region"],
            registry=r,
        )
        self.requests = Counter(
            "prfaas_region_requests",
            "Requests routed to a region, by the tenant's first region (another: a failover)",
            ["region", "home_region"],
            registry=r,
        )
        self.refused = Counter(
            "prfaas_region_refused",
            "Requests no allowed region could serve, by the tenant's first region",
            ["home_region"],
            registry=r,
        )
        metrics.add_scrape_hook(self.refresh)

    def refresh(self) -> None:
        for entry in region_status(self.regions, self.fleet):
            for state in STATES:
                value = 1.0 if entry["state"] == state else 0.0
                self.state.labels(entry["name"], state).set(value)
            self.healthy_decode.labels(entry["name"]).set(entry["healthy_decode"])
            self.inflight.labels(entry["name"]).set(entry["inflight"])

    def on_request(self, record: RequestRecord) -> None:
        """An audit log request listener."""
        home = record.home_region or ""
        if record.outcome == "routed" and record.region is not None:
            self.requests.labels(record.region, home).inc()
        elif record.outcome == "refused":
            self.refused.labels(home).inc()
