"""Per-tenant rate limits (token buckets) and usage accounting (a crash-safe JSON-lines log).

Plain Python over plain data: no HTTP, no torch. The gateway calls ``RateLimiter.admit`` before
admission and ``UsageLedger.finish`` once per request; ``transfer.audit`` reports the KV each
request moved across a link (``UsageLedger.kv_moved``)."""
