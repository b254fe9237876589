"""One audit line (``transfer/audit.py``) per cross-cluster KV transfer the gateway dispatched."""

from __future__ import annotations

from prfaas.gateway.fleet import WorkerFleet
from prfaas.messages import PrefillCommand, PrefillResult
from prfaas.transfer.audit import AuditLog, AuditRecord


def audit_transfer(
    audit: AuditLog | None,
    fleet: WorkerFleet,
    cmd: PrefillCommand,
    route: tuple[str, str],
    result: PrefillResult,
    tenant: str,
    elapsed_s: float,
) -> None:
    """One audit line per cross-cluster transfer (never the prompt: ids and sizes only):
    the prefill's KV to its decode instance, or a cache pull between prefill instances.
    ``route`` is (source instance, destination instance)."""
    clusters = []
    for name in route:
        record = fleet.workers.get(name)
        clusters.append(record.info.cluster if record is not None else "?")
    if audit is None or clusters[0] == clusters[1]:
        return
    audit.transfer(
        AuditRecord(
            request_id=cmd.request_id,
            tenant=tenant,
            kv_bytes=result.kv_bytes,
            wire_bytes=result.wire_bytes,
            link=cmd.target.link,
            source_cluster=clusters[0],
            source_instance=route[0],
            destination_cluster=clusters[1],
            destination_instance=route[1],
            outcome="ok" if result.ok else "failed",
            reason=result.error,
            seconds=result.transfer_s if result.ok else elapsed_s,
        )
    )
