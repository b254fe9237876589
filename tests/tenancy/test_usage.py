"""The usage log: one line per finished request, KV bytes from the audit records, late KV on
a line of its own, ids counted once, and a writer killed mid-stream (SIGKILL) leaves a log
the next writer continues without losing or double-counting a complete line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prfaas.tenancy.usage import UsageLedger, UsageRecord, read_usage, records
from prfaas.transfer.audit import AuditLog, AuditRecord


def audit_record(request_id: str, kv_bytes: int, outcome: str = "ok") -> AuditRecord:
    return AuditRecord(
        request_id=request_id,
        tenant="alice",
        kv_bytes=kv_bytes,
        wire_bytes=kv_bytes,
        link="remote->local",
        source_cluster="remote",
        source_instance="prfaas-0",
        destination_cluster="local",
        destination_instance="pd-d-0",
        outcome="ok" if outcome == "ok" else "failed",
        reason=None,
        seconds=0.01,
    )


def test_a_request_line_carries_its_tokens_and_the_kv_its_transfers_moved(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    ledger = UsageLedger(path)
    audit = AuditLog()
    audit.listeners.append(ledger.transferred)
    seen: list[UsageRecord] = []
    ledger.listeners.append(seen.append)
    ledger.begin("r1", "alice", "m")
    audit.transfer(audit_record("r1", 1000))
    audit.transfer(audit_record("r1", 24))  # a cache pull over the same link
    audit.transfer(audit_record("r1", 0, "failed"))
    rec = ledger.finish("r1", prompt_tokens=100, cached_tokens=16, completion_tokens=7, remote=True)
    assert rec is not None and rec.kv_bytes == {"remote->local": 1024}
    assert (
        ledger.finish("r1", prompt_tokens=1, cached_tokens=0, completion_tokens=1, remote=True)
        is None
    )
    ledger.flush()  # the writer thread has written and fsynced the line
    [line] = path.read_text().splitlines()
    obj = json.loads(line)
    assert obj["event"] == "usage" and obj["id"] == "r1" and obj["prefill"] == "remote"
    assert (obj["prompt_tokens"], obj["cached_tokens"], obj["completion_tokens"]) == (100, 16, 7)
    assert seen == [rec]
    ledger.close()


def test_kv_reported_after_its_request_ended_gets_a_line_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    ledger = UsageLedger(path)
    ledger.begin("r1", "alice", "m")
    ledger.finish("r1", prompt_tokens=10, cached_tokens=0, completion_tokens=2, remote=False)
    ledger.kv_moved("r1", "alice", "remote->local", 512)
    ledger.begin("r2", "alice", "m")
    ledger.discard("r2")  # refused after begin: no line
    ledger.close()
    totals = read_usage(path)
    assert set(totals) == {("alice", "m")}
    t = totals[("alice", "m")]
    assert (t.requests, t.local_prefills, t.prompt_tokens, t.kv_bytes) == (
        1,
        1,
        10,
        {"remote->local": 512},
    )


def test_a_replayed_line_is_counted_once_and_a_torn_one_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    ledger = UsageLedger(path)
    for i in range(3):
        ledger.begin(f"r{i}", "alice", "m")
        ledger.finish(f"r{i}", prompt_tokens=10, cached_tokens=0, completion_tokens=1, remote=True)
    ledger.close()
    lines = path.read_bytes().splitlines(keepends=True)
    with path.open("ab") as f:
        f.write(lines[1])  # a replay
        f.write(lines[2][:20])  # a crash mid-write
    assert [r.id for r in records(path)] == ["r0", "r1", "r2"]
    assert read_usage(path)[("alice", "m")].prompt_tokens == 30


WRITER = """
import sys
from pathlib import Path
from prfaas.tenancy.usage import UsageLedger
ledger = UsageLedger(Path(sys.argv[1]))
i = 0
while True:
    rid = f"{sys.argv[2]}-{i}"
    ledger.begin(rid, "alice", "m")
    ledger.finish(rid, prompt_tokens=3, cached_tokens=1, completion_tokens=2, remote=False)
    i += 1
"""


def kill_writer(path: Path, prefix: str) -> None:
    """Run a writer until it has appended about 100 lines, then SIGKILL it."""
    size = path.stat().st_size if path.exists() else 0
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), prefix])
    try:
        end = time.monotonic() + 30
        while (not path.exists() or path.stat().st_size < size + 20_000) and (
            time.monotonic() < end
        ):
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_a_writer_killed_mid_stream_loses_nothing_it_wrote_whole(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    kill_writer(path, "a")
    kill_writer(path, "b")  # a restarted gateway appends to the same log
    with path.open("ab") as f:
        f.write(b'{"event":"usage","id":"c-0","tenant":"ali')  # a torn write
    ledger = UsageLedger(path)  # cuts the torn tail before appending
    ledger.begin("c-1", "alice", "m")
    ledger.finish("c-1", prompt_tokens=3, cached_tokens=1, completion_tokens=2, remote=False)
    ledger.close()
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b'"id":"c-0"' not in raw
    whole = [json.loads(line) for line in raw.splitlines()]  # every line parses
    ids = [obj["id"] for obj in whole]
    assert len(ids) == len(set(ids))  # nothing written twice
    for prefix in ("a", "b"):  # each writer's requests, in order, none missing
        mine = [int(i.split("-")[1]) for i in ids if i.startswith(prefix + "-")]
        assert mine == list(range(len(mine))) and len(mine) > 10
    t = read_usage(path)[("alice", "m")]
    assert (t.requests, t.prompt_tokens, t.completion_tokens) == (
        len(ids),
        3 * len(ids),
        2 * len(ids),
    )


def test_lines_from_many_threads_are_each_written_once(tmp_path: Path) -> None:
    """Group commit: requests ending on several threads at once share fsyncs, and every
    line is written whole and once by the time ``close`` returns."""
    import threading

    path = tmp_path / "usage.jsonl"
    ledger = UsageLedger(path)

    def end_requests(t: int) -> None:
        for i in range(200):
            rid = f"t{t}-{i}"
            ledger.begin(rid, "alice", "m")
            ledger.finish(rid, prompt_tokens=1, cached_tokens=0, completion_tokens=1, remote=True)

    threads = [threading.Thread(target=end_requests, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ledger.close()
    ledger.close()  # idempotent
    ids = [json.loads(line)["id"] for line in path.read_bytes().splitlines()]
    assert sorted(ids) == sorted(f"t{t}-{i}" for t in range(8) for i in range(200))
