"""The plain parts of the vLLM engine behind the worker seam (no vLLM needed): the cache
events it reports under prfaas's salted hashes, and its reading of the connector's
hand-off log."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path

from prfaas.integrations.vllm.cache_report import CacheReport
from prfaas.integrations.vllm.events import EventLog, HandoffEvent
from prfaas.integrations.vllm.handoff_log import HandoffLog
from prfaas.kvcache.hashing import block_hashes, root_hash

FINGERPRINT = "ab" * 16


def test_full_blocks_are_reported_once_per_tenant_and_the_oldest_leave_first() -> None:
    report = CacheReport(FINGERPRINT, block_size=4, capacity_blocks=3)
    prompt = list(range(10))  # two full blocks, a partial one
    report.computed(prompt, b"alice")
    alice = block_hashes(prompt, 4, root_hash(FINGERPRINT, b"alice"))
    assert [(e.block_hash, e.stored) for e in report.drain()] == [(h.hex(), True) for h in alice]
    report.computed(prompt, b"alice")
    assert report.drain() == []  # already reported
    report.computed(prompt, b"bob")  # another tenant: other hashes; over capacity
    bob = block_hashes(prompt, 4, root_hash(FINGERPRINT, b"bob"))
    events = [(e.block_hash, e.stored) for e in report.drain()]
    assert events == [(bob[0].hex(), True), (bob[1].hex(), True), (alice[0].hex(), False)]


def test_the_log_tells_each_transfer_once_it_ended(tmp_path: Path) -> None:
    path = tmp_path / "handoffs.jsonl"
    log = HandoffLog(path)
    assert log.get("t1", "send") is None  # no file yet
    events = EventLog(str(path))
    events.record(HandoffEvent("t1", "send", True, 64, 0.5))
    events.record(HandoffEvent("t2", "load", False, 63, 1.0, "late", held_bytes=0))
    with path.open("a") as f:
        f.write("not json\n")
        f.write(json.dumps(asdict(HandoffEvent("t3", "load", True, 31, 0.2, held_bytes=7)))[:20])
    sent = log.get("t1", "send")
    assert sent is not None and sent.ok and sent.num_tokens == 64
    assert log.get("t1", "load") is None
    assert log.num_load_failures == 1
    assert log.get("t3", "load") is None  # half a line: not yet
    with path.open("a") as f:
        f.write(json.dumps(asdict(HandoffEvent("t3", "load", True, 31, 0.2, held_bytes=7)))[20:])
        f.write("\n")
    landed = asyncio.run(log.wait("t3", "load", timeout_s=1.0))
    assert landed is not None and landed.ok and log.held_bytes == 7
    assert asyncio.run(log.wait("t9", "load", timeout_s=0.05)) is None
