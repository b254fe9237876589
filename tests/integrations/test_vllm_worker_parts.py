"""The plain parts of the vLLM engine behind the worker seam (no vLLM engine started): the
cache events it reports under prfaas's salted hashes, its reading of the connector's hand-off
log, and our sampling spec as vLLM's params and vLLM's logprobs as ours (these need vLLM's
package: skipped without it)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from prfaas.integrations.vllm.cache_report import CacheReport
from prfaas.integrations.vllm.events import EventLog, HandoffEvent
from prfaas.integrations.vllm.handoff_log import HandoffLog
from prfaas.integrations.vllm.sampling import (
    logprob_entries,
    prompt_logprob_entries,
    resume_refusal,
    sampling_params,
)
from prfaas.kvcache.hashing import block_hashes, root_hash
from prfaas.messages import SamplingSpec

FINGERPRINT = "ab" * 16


def test_vllm_kv_events_become_ours_under_each_tenants_salted_hashes() -> None:
    """vLLM's BlockStored/BlockRemoved (as its engine publishes them: its own hashes, the
    parent's, the tokens, the cache salt among the first block's extra keys) become stored
    and removed events under prfaas's chain, the one the gateway computes."""
    report = CacheReport(FINGERPRINT, block_size=4)
    prompt = list(range(12))  # three full blocks, stored in two steps
    alice = block_hashes(prompt, 4, root_hash(FINGERPRINT, b"\xa1"))
    report.stored([101, 102], None, prompt[:8], [("a1",), None], 4)
    report.stored([103], 102, prompt[8:], None, 4)
    assert [(e.block_hash, e.stored) for e in report.drain()] == [(h.hex(), True) for h in alice]
    report.stored([101], None, prompt[:4], [("a1",)], 4)  # stored again: nothing new
    report.stored([201], None, prompt[:4], None, 4)  # no salt: the empty tenant's chain
    (bare,) = report.drain()
    assert bare.block_hash == block_hashes(prompt[:4], 4, root_hash(FINGERPRINT))[0].hex()
    report.stored([302], 999, prompt[4:8], None, 4)  # its parent was never seen: not placed
    assert report.drain() == [] and report.num_blocks == 4
    report.removed([102, 555])  # 555: never stored
    assert [(e.block_hash, e.stored) for e in report.drain()] == [(alice[1].hex(), False)]
    report.cleared()
    assert sorted(e.block_hash for e in report.drain()) == sorted(
        [alice[0].hex(), alice[2].hex(), bare.block_hash]
    )
    assert report.num_blocks == 0
    with pytest.raises(ValueError, match="blocks of 8 tokens"):
        report.stored([1], None, list(range(8)), None, 8)


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


def test_vllm_logprobs_become_ours_the_top_list_without_a_lower_chosen_token() -> None:
    Logprob = pytest.importorskip("vllm.logprobs").Logprob

    # vLLM's dict for logprobs=2: the top two and the chosen token ranked 4th.
    position = {7: Logprob(-0.5, 1), 9: Logprob(-1.0, 2), 3: Logprob(-3.0, 4)}
    (entry,) = logprob_entries([position], [3], num_top=2)
    assert (entry.token_id, entry.logprob, entry.rank) == (3, -3.0, 4)
    assert (entry.top_token_ids, entry.top_logprobs) == ([7, 9], [-0.5, -1.0])
    first, second = prompt_logprob_entries([None, {9: Logprob(-1.0, 2)}], [5, 9], num_top=0)
    assert first is None and second is not None
    assert (second.token_id, second.rank, second.top_token_ids) == (9, 2, [])


def test_the_spec_reaches_vllm_whole_on_decode_and_bare_on_prefill() -> None:
    pytest.importorskip("vllm")
    spec = SamplingSpec(
        max_tokens=9,
        temperature=0.7,
        seed=5,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        repetition_penalty=1.2,
        min_tokens=3,
        min_p=0.1,
        logit_bias={4: 2.0},
        logprobs=2,
        prompt_logprobs=1,
        json_schema='{"type": "object"}',
    )
    p = sampling_params(spec)
    assert (p.max_tokens, p.min_tokens, p.seed, p.logprobs, p.prompt_logprobs) == (9, 3, 5, 2, 1)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.5, 0.25, 1.2)
    assert p.logit_bias == {4: 2.0} and p.min_p == 0.1
    assert p.structured_outputs is not None and p.structured_outputs.json == '{"type": "object"}'
    assert sampling_params(spec.model_copy(update={"json_schema": None, "json_object": True}))
    bare = sampling_params(spec, prefill_only=True)
    assert bare.max_tokens == 1 and bare.structured_outputs is None and bare.logprobs is None
    resumed = sampling_params(spec, num_resumed=4)
    assert (resumed.max_tokens, resumed.min_tokens, resumed.prompt_logprobs) == (5, 0, None)


def test_what_vllm_cannot_carry_across_a_resume_is_refused_by_name() -> None:
    plain = SamplingSpec(max_tokens=8, repetition_penalty=1.3, seed=1)
    assert resume_refusal(plain, 3) is None
    assert "max_tokens" in (resume_refusal(plain, 8) or "")
    grammar = plain.model_copy(update={"json_object": True, "frequency_penalty": 0.1})
    assert resume_refusal(grammar, 3) == (
        "a vLLM instance cannot resume a stream that uses frequency_penalty, json_object"
    )
