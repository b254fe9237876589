"""The audit log: one JSON line per cross-cluster KV transfer, written by the gateway as each
transfer it dispatched ends (``AuditLog.shipped``), and one per request routed, resumed at
another decode instance or refused, naming every cluster it touched (``AuditLog.request``).

Each line says who moved how much KV where, and how it ended::

    {"event": "kv_transfer", "ts": "2026-01-01T12:00:00.123Z", "request_id": "cmpl-…",
     "tenant": "alice", "kv_bytes": 65536, "wire_bytes": 66100, "link": "remote->local",
     "source_cluster": "remote", "source_instance": "prfaas-0",
     "destination_cluster": "local", "destination_instance": "pd-d-0",
     "outcome": "ok", "reason": null, "seconds": 0.012}

and::

    {"event": "request", "ts": "…", "request_id": "cmpl-…", "tenant": "alice",
     "outcome": "routed", "region": "eu", "home_region": "eu", "clusters": ["eu-pd", "eu-prfaas"],
     "instances": ["eu-prfaas-0", "eu-pd-d-0"], "reason": null}

(``outcome`` ``resumed``: decode failover moved it, ``clusters`` then names the new decode
instance's; ``refused``: no allowed region could serve it, ``clusters`` is empty.)

Invariant: a line never carries prompt text, token ids or sampled text; only identifiers,
sizes and timings (``AuditRecord`` has no field that could hold them, and ``reason`` is a
transport error cut to ``MAX_REASON_CHARS``). Lines go to the ``prfaas.audit`` logger and,
when a path is configured, are appended to that file (one ``write`` per line).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from prfaas.messages import PrefillCommand, PrefillResult, WorkerInfo

logger = logging.getLogger("prfaas.audit")
MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class AuditRecord:
    request_id: str
    tenant: str
    kv_bytes: int  # KV delivered, as stored (before the codec)
    wire_bytes: int  # bytes on the link, after the codec
    link: str
    source_cluster: str
    source_instance: str
    destination_cluster: str
    destination_instance: str
    outcome: Literal["ok", "failed"]
    reason: str | None  # why it failed; None when ok
    seconds: float  # transfer opened to acknowledged (ok), or command sent to failure


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    tenant: str
    outcome: Literal["routed", "resumed", "refused"]
    region: str | None  # where it decodes; None: refused
    home_region: str | None  # the tenant's first allowed region (elsewhere: a failover)
    clusters: tuple[str, ...]  # every cluster this step touched: prefill, cache pull, decode
    instances: tuple[str, ...]
    reason: str | None = None  # why it was refused


class AuditLog:
    """Writes ``AuditRecord`` lines to the ``prfaas.audit`` logger and an optional file, and
    hands each record to ``listeners`` (the tenants' usage ledger counts KV bytes from them)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.listeners: list[Callable[[AuditRecord], None]] = []
        self.request_listeners: list[Callable[[RequestRecord], None]] = []  # region metrics
        self._lock = threading.Lock()
        self._fd: int | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_APPEND: each line lands whole at the end, even with another writer.
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def transfer(self, record: AuditRecord) -> str:
        """Record one transfer; returns the JSON line (without the newline)."""
        fields = asdict(record)
        if record.reason is not None:
            fields["reason"] = record.reason[:MAX_REASON_CHARS]
        fields["seconds"] = round(record.seconds, 6)
        line = self._write("kv_transfer", fields)
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:
                logger.exception("audit listener failed")
        return line

    def request(self, record: RequestRecord) -> str:
        """Record where one request went; returns the JSON line (without the newline)."""
        fields = asdict(record)
        fields["clusters"], fields["instances"] = list(record.clusters), list(record.instances)
        if record.reason is not None:
            fields["reason"] = record.reason[:MAX_REASON_CHARS]
        line = self._write("request", fields)
        for listener in self.request_listeners:
            try:
                listener(record)
            except Exception:
                logger.exception("audit listener failed")
        return line

    def _write(self, event: str, fields: dict[str, object]) -> str:
        now = datetime.datetime.now(datetime.UTC)
        line = json.dumps(
            {"event": event, "ts": now.isoformat(timespec="milliseconds"), **fields},
            ensure_ascii=True,
        )
        logger.info("%s", line)
        if self._fd is not None:
            with self._lock:
                os.write(self._fd, line.encode() + b"\n")
        return line

    def shipped(
        self,
        cmd: PrefillCommand,
        result: PrefillResult,
        source: WorkerInfo,
        destination: WorkerInfo,
        tenant: str,
        elapsed_s: float,
    ) -> None:
        """Record ``cmd``'s KV shipped from ``source`` to ``destination`` (a prefill's KV to
        its decode instance, or a cache pull between prefill instances), if it crossed
        clusters; ``elapsed_s`` since the command was sent."""
        if source.cluster == destination.cluster:
            return
        self.transfer(
            AuditRecord(
                request_id=cmd.request_id,
                tenant=tenant,
                kv_bytes=result.kv_bytes,
                wire_bytes=result.wire_bytes,
                link=cmd.target.link,
                source_cluster=source.cluster,
                source_instance=source.name,
                destination_cluster=destination.cluster,
                destination_instance=destination.name,
                outcome="ok" if result.ok else "failed",
                reason=result.error,
                seconds=result.transfer_s if result.ok else elapsed_s,
            )
        )

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
