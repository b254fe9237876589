"""Usage per tenant and model: one JSON line per finished request, the record an operator
bills from.

A line (``UsageRecord``), e.g.::

    {"event": "usage", "id": "cmpl-…", "ts": "2026-01-01T12:00:00.123Z", "tenant": "alice",
     "model": "m", "prompt_tokens": 812, "cached_tokens": 256, "completion_tokens": 64,
     "prefill": "remote", "kv_bytes": {"remote->local": 1048576}}

``prefill`` is where the route sent the prompt: ``remote`` (a PrfaaS cluster) or ``local``.
``kv_bytes`` is the KV each cross-cluster link delivered for the request, as the audit log
recorded it. A transfer reported after its request's line was written (a prefill that outlived
its stream) gets a line of its own: ``{"event": "usage_kv", "id": "<request id>:kv:<n>", ...}``
with the tenant, model and ``kv_bytes`` only.

Crash safety: each line is written once, when its request ends, to a file opened
``O_APPEND``. A writer thread appends the lines queued since its last round in one ``write``
and then ``fsync``s (group commit: the event loop never waits for the disk, and one fsync
covers every request that ended meanwhile); ``close`` writes what is queued. Every line has
a unique ``id``: a reader counts each id once (``read_usage``), so a log replayed or copied
twice over is still billed once, and a torn last line (the process died mid-write) is
skipped and cut off by the next writer before it appends. A process killed outright loses
only the lines queued since the last round (the requests that ended in the last fsync).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prfaas.transfer.audit import AuditRecord

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 16  # a reader skips longer lines (never written by the ledger)


@dataclass(frozen=True)
class UsageRecord:
    id: str  # the request id (unique per request), or ``<request id>:kv:<n>`` for late KV
    tenant: str
    model: str
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    prefill: str = ""  # "remote" | "local"; "" on a late-KV line
    kv_bytes: dict[str, int] = field(default_factory=dict)  # link -> KV bytes delivered

    @property
    def event(self) -> str:
        return "usage" if self.prefill else "usage_kv"


@dataclass
class UsageTotals:
    """Sums over a usage log, per (tenant, model)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    remote_prefills: int = 0
    local_prefills: int = 0
    kv_bytes: dict[str, int] = field(default_factory=dict)

    def add(self, r: UsageRecord) -> None:
        self.prompt_tokens += r.prompt_tokens
        self.cached_tokens += r.cached_tokens
        self.completion_tokens += r.completion_tokens
        if r.prefill:
            self.requests += 1
            self.remote_prefills += r.prefill == "remote"
            self.local_prefills += r.prefill == "local"
        for link, n in r.kv_bytes.items():
            self.kv_bytes[link] = self.kv_bytes.get(link, 0) + n


class UsageLedger:
    """Collects each open request's KV moves and writes its line when it finishes; calls
    ``listeners`` (e.g. Prometheus counters) with every record it writes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.listeners: list[Callable[[UsageRecord], None]] = []
        self._lock = threading.Lock()
        self._open: dict[str, tuple[str, str, dict[str, int]]] = {}  # id -> tenant, model, kv
        self._late_lines = 0  # late-KV lines written (their ids' suffix)
        self._fd: int | None = None
        self._queued: list[bytes] = []  # lines not yet written
        self._writing = False  # the writer thread holds lines it has not yet fsynced
        self._closing = False
        self._wake = threading.Condition(self._lock)
        self._writer: threading.Thread | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _cut_torn_tail(path)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._writer = threading.Thread(target=self._write_rounds, daemon=True)
            self._writer.start()

    def begin(self, request_id: str, tenant: str, model: str) -> None:
        with self._lock:
            self._open[request_id] = (tenant, model, {})

    def discard(self, request_id: str) -> None:
        """Forget a request that was never served (refused after ``begin``): no line."""
        with self._lock:
            self._open.pop(request_id, None)

    def transferred(self, record: AuditRecord) -> None:
        """An audit record of a cross-cluster transfer (an ``AuditLog`` listener)."""
        if record.outcome == "ok":
            self.kv_moved(record.request_id, record.tenant, record.link, record.kv_bytes)

    def kv_moved(self, request_id: str, tenant: str, link: str, kv_bytes: int) -> None:
        """KV delivered across ``link`` for a request."""
        with self._lock:
            entry = self._open.get(request_id)
            if entry is not None:
                moved = entry[2]
                moved[link] = moved.get(link, 0) + kv_bytes
                return
            self._late_lines += 1
            late_id = f"{request_id}:kv:{self._late_lines}"
        # model "": the request's line, written already, names it.
        self._write(UsageRecord(late_id, tenant, "", kv_bytes={link: kv_bytes}))

    def finish(
        self,
        request_id: str,
        *,
        prompt_tokens: int,
        cached_tokens: int,
        completion_tokens: int,
        remote: bool,
    ) -> UsageRecord | None:
        """Write the request's line (once: a second call is a no-op and returns None)."""
        with self._lock:
            entry = self._open.pop(request_id, None)
        if entry is None:
            return None
        tenant, model, moved = entry
        record = UsageRecord(
            request_id,
            tenant,
            model,
            prompt_tokens,
            cached_tokens,
            completion_tokens,
            "remote" if remote else "local",
            moved,
        )
        self._write(record)
        return record

    def _write(self, record: UsageRecord) -> None:
        if self._writer is not None:
            line = _encode(record)
            with self._wake:
                self._queued.append(line)
                self._wake.notify_all()
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:
                logger.exception("usage listener failed")

    def _write_rounds(self) -> None:
        """The writer thread: append what is queued, fsync, repeat; ends once closed."""
        fd = self._fd
        assert fd is not None
        while True:
            with self._wake:
                while not self._queued and not self._closing:
                    self._wake.wait()
                lines, self._queued = self._queued, []
                self._writing = bool(lines)
            if not lines:  # closing, and everything is written
                return
            try:
                data = b"".join(lines)
                while data:  # a short write (disk full) goes on where it stopped
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            except OSError:
                logger.exception("usage log %s: %d lines not written", self.path, len(lines))
            with self._wake:
                self._writing = False
                self._wake.notify_all()

    def flush(self) -> None:
        """Return once every line queued so far is written and fsynced."""
        with self._wake:
            while self._writer is not None and (self._queued or self._writing):
                self._wake.wait()

    def close(self) -> None:
        """Write what is queued, then stop the writer and close the file. Idempotent."""
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _encode(r: UsageRecord) -> bytes:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    fields = {
        "event": r.event,
        "id": r.id,
        "ts": now,
        "tenant": r.tenant,
        "model": r.model,
        "prompt_tokens": r.prompt_tokens,
        "cached_tokens": r.cached_tokens,
        "completion_tokens": r.completion_tokens,
        "prefill": r.prefill,
        "kv_bytes": r.kv_bytes,
    }
    return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline (a write cut short by a crash)."""
    if not path.exists():
        return
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        end = size
        while end > 0:
            step = min(4096, end)
            f.seek(end - step)
            chunk = f.read(step)
            if end == size and chunk.endswith(b"\n"):
                return
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                end = end - step + cut + 1
                break
            end -= step
        logger.warning("usage log %s: dropping a torn last line (%d bytes)", path, size - end)
        f.truncate(end)


def records(path: Path) -> Iterator[UsageRecord]:
    """The log's records, each id once (the first line with it), torn or bad lines skipped."""
    seen: set[str] = set()
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n") or len(raw) > MAX_LINE_BYTES:
                continue
            try:
                obj = json.loads(raw)
                rec = UsageRecord(
                    id=str(obj["id"]),
                    tenant=str(obj["tenant"]),
                    model=str(obj["model"]),
                    prompt_tokens=int(obj["prompt_tokens"]),
                    cached_tokens=int(obj["cached_tokens"]),
                    completion_tokens=int(obj["completion_tokens"]),
                    prefill=str(obj["prefill"]),
                    kv_bytes={str(k): int(v) for k, v in dict(obj["kv_bytes"]).items()},
                )
            except (ValueError, KeyError, TypeError):
                logger.warning("usage log %s: skipping a malformed line", path)
                continue
            if rec.id not in seen:
                seen.add(rec.id)
                yield rec


def read_usage(path: Path) -> dict[tuple[str, str], UsageTotals]:
    """Totals per (tenant, model) over a usage log; late-KV lines count under model ""
    unless their request's line names it."""
    model_of: dict[str, str] = {}
    totals: dict[tuple[str, str], UsageTotals] = {}
    for r in records(path):
        if r.prefill:
            model_of[r.id] = r.model
        model = r.model or model_of.get(r.id.split(":kv:", 1)[0], "")
        totals.setdefault((r.tenant, model), UsageTotals()).add(r)
    return totals
