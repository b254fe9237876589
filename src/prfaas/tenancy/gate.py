"""A gateway's per-tenant gate: the tenant's rate limits before admission, its usage line
when the request ends. Tokens are reserved as prompt + ``max_tokens`` and settled to the
usage the client was told (the gateway's ``Generation.usage()``, the one owner of those
counts)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry

from prfaas.tenancy.limits import RateLimited, RateLimiter, Reservation, TenantLimits
from prfaas.tenancy.metrics import UsageMetrics
from prfaas.tenancy.usage import UsageLedger


class TenantGate:
    def __init__(
        self,
        limits: Mapping[str, TenantLimits],
        usage_log: Path | None,
        registry: CollectorRegistry,
    ) -> None:
        self.limiter = RateLimiter(limits)
        self.ledger = UsageLedger(usage_log)
        self.metrics = UsageMetrics(registry)
        self.ledger.listeners.append(self.metrics.record)

    def admit(
        self, tenant: str, request_id: str, model: str, prompt_tokens: int, max_tokens: int
    ) -> Reservation:
        """Take the request from the tenant's buckets: ``RateLimited`` (429 + Retry-After)
        past a limit, ``ValueError`` (400) if it could never fit."""
        try:
            reservation = self.limiter.admit(tenant, prompt_tokens + max_tokens)
        except RateLimited:
            self.metrics.rate_limited.labels(tenant).inc()
            raise
        self.ledger.begin(request_id, tenant, model)
        return reservation

    def refused(self, reservation: Reservation, request_id: str) -> None:
        """Admitted here but refused later (no capacity, bad input): nothing used, no line."""
        self.ledger.discard(request_id)
        self.limiter.settle(reservation, 0)

    def finish(
        self,
        reservation: Reservation,
        request_id: str,
        *,
        prompt_tokens: int,
        cached_tokens: int,
        completion_tokens: int,
        remote: bool,
    ) -> None:
        """Write the request's usage line and correct its token reservation to the usage."""
        self.ledger.finish(
            request_id,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens,
            completion_tokens=completion_tokens,
            remote=remote,
        )
        self.limiter.settle(reservation, prompt_tokens + completion_tokens)
