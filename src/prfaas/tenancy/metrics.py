"""Usage per tenant and model as Prometheus counters, fed by the ``UsageLedger``'s records
(the log and the counters count the same records). Counters start at zero with the process;
the usage log is what survives a restart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from prfaas.tenancy.usage import UsageRecord


class UsageMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r, labels = registry, ["tenant", "model"]
        self.prompt = Counter(
            "prfaas_tenant_prompt_tokens", "Prompt tokens by tenant", labels, registry=r
        )
        self.cached = Counter(
            "prfaas_tenant_cached_tokens",
            "Prompt tokens served from a prefix cache, by tenant",
            labels,
            registry=r,
        )
        self.completion = Counter(
            "prfaas_tenant_completion_tokens", "Completion tokens by tenant", labels, registry=r
        )
        self.prefills = Counter(
            "prfaas_tenant_prefills",
            "Finished requests by tenant and where their prompt was sent (remote, local)",
            [*labels, "where"],
            registry=r,
        )
        self.kv_bytes = Counter(
            "prfaas_tenant_kv_bytes",
            "KV bytes delivered across a cross-cluster link for a tenant",
            [*labels, "link"],
            registry=r,
        )
        self.rate_limited = Counter(
            "prfaas_tenant_rate_limited",
            "Requests refused by a tenant's rate limits",
            ["tenant"],
            registry=r,
        )

    def record(self, rec: UsageRecord) -> None:
        tenant, model = rec.tenant, rec.model
        if rec.prefill:
            self.prompt.labels(tenant, model).inc(rec.prompt_tokens)
            self.cached.labels(tenant, model).inc(rec.cached_tokens)
            self.completion.labels(tenant, model).inc(rec.completion_tokens)
            self.prefills.labels(tenant, model, rec.prefill).inc()
        for link, n in rec.kv_bytes.items():
            self.kv_bytes.labels(tenant, model, link).inc(n)
