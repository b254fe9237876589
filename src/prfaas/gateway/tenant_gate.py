"""The gateway's hook into ``prfaas.tenancy``: a tenant's rate limits before admission, its
usage line when the request ends. Tokens are reserved as prompt + ``max_tokens`` and settled
to the usage the client was told (``Generation.usage()``, the one owner of those counts)."""

from __future__ import annotations

from prfaas.api.protocol import Usage
from prfaas.gateway.backend import Overloaded
from prfaas.gateway.config import GatewayConfig
from prfaas.gateway.metrics import GatewayMetrics, route_kind
from prfaas.tenancy.limits import RateLimited, RateLimiter, Reservation
from prfaas.tenancy.metrics import UsageMetrics
from prfaas.tenancy.usage import UsageLedger


class TenantGate:
    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics) -> None:
        self.limiter = RateLimiter(config.tenant_limits)
        self.ledger = UsageLedger(config.usage_log)
        self.metrics = UsageMetrics(metrics.registry)
        self.ledger.listeners.append(self.metrics.record)

    def admit(
        self, tenant: str, request_id: str, model: str, prompt_tokens: int, max_tokens: int
    ) -> Reservation:
        """Take the request from the tenant's buckets: ``Overloaded`` (429 + Retry-After)
        past a limit, ``ValueError`` (400) if it could never fit."""
        try:
            reservation = self.limiter.admit(tenant, prompt_tokens + max_tokens)
        except RateLimited as exc:
            self.metrics.rate_limited.labels(tenant).inc()
            raise Overloaded(exc.retry_after_s, str(exc)) from None
        self.ledger.begin(request_id, tenant, model)
        return reservation

    def refused(self, reservation: Reservation, request_id: str) -> None:
        """Admitted here but refused later (no capacity, bad input): nothing used, no line."""
        self.ledger.discard(request_id)
        self.limiter.settle(reservation, 0)

    def finish(self, reservation: Reservation, request_id: str, usage: Usage, route: str) -> None:
        """Write the request's usage line and correct its token reservation to the usage."""
        self.ledger.finish(
            request_id,
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.prompt_tokens_details.cached_tokens,
            completion_tokens=usage.completion_tokens,
            remote=route_kind(route) == "prfaas",
        )
        self.limiter.settle(reservation, usage.prompt_tokens + usage.completion_tokens)
