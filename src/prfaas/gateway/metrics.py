"""Prometheus metrics of one gateway, in its own registry (several apps per process in tests).

Hook for other components: ``metrics.registry`` takes more collectors (e.g. a ``Gauge`` of
queue depth per instance, egress Gbps per link, ``prfaas_threshold_tokens``), and
``add_scrape_hook(fn)`` runs ``fn()`` before each scrape so such gauges can be refreshed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "GatewayMetrics", "route_kind"]

logger = logging.getLogger(__name__)

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


def route_kind(route: str) -> str:
    """The metrics label of a route: its first word (``prfaas``, ``pd-p``, ``local``)."""
    return route.split(" ", 1)[0] or "none"


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.ttft_s = _latency(
            r, "time_to_first_token", "Time from request arrival to the first token", _TTFT_BUCKETS
        )
        self.tpot_s = _latency(
            r,
            "time_per_output_token",
            "Mean time per output token after the first, per request",
            _TPOT_BUCKETS,
        )
        self.e2e_s = _latency(
            r, "e2e_request_latency", "Time from request arrival to its last token", _E2E_BUCKETS
        )
        self.requests = Counter(
            "prfaas_requests", "Requests by route and HTTP status", ["route", "status"], registry=r
        )
        self.in_flight = Gauge("prfaas_requests_in_flight", "Requests admitted now", registry=r)
        self.prompt_tokens = Counter("prfaas_prompt_tokens", "Prompt tokens", registry=r)
        self.cached_tokens = Counter(
            "prfaas_cached_prompt_tokens", "Prompt tokens served from a prefix cache", registry=r
        )
        self.generation_tokens = Counter("prfaas_generation_tokens", "Output tokens", registry=r)
        self._hooks: list[Callable[[], None]] = []

    def add_scrape_hook(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)

    def render(self) -> bytes:
        for hook in self._hooks:
            try:
                hook()
            except Exception:
                logger.exception("metrics scrape hook failed")
        return generate_latest(self.registry)


def _latency(
    registry: CollectorRegistry, name: str, doc: str, buckets: tuple[float, ...]
) -> Histogram:
    """A latency histogram by route, ``prfaas_<name>_seconds``."""
    return Histogram(f"prfaas_{name}_seconds", doc, ["route"], buckets=buckets, registry=registry)
