"""The batch scheduler and the request state machine, without a model (plain Python)."""

from __future__ import annotations

import pytest

from prfaas.engine.request import (
    ALLOWED_TRANSITIONS,
    InvalidTransitionError,
    Request,
    RequestStatus,
)
from prfaas.engine.sampling_params import SamplingParams
from prfaas.engine.scheduler import Scheduler
from prfaas.kvcache.hashing import root_hash
from prfaas.kvcache.manager import KVCacheManager


def make_request(rid: str, num_prompt: int, max_tokens: int = 4) -> Request:
    return Request(
        rid,
        list(range(num_prompt)),
        SamplingParams(max_tokens=max_tokens),
        root_hash("m"),
        block_size=4,
    )


def test_transition_table() -> None:
    for status in RequestStatus:
        assert status in ALLOWED_TRANSITIONS
    for done in (RequestStatus.FINISHED, RequestStatus.ABORTED):
        assert not ALLOWED_TRANSITIONS[done]
    req = make_request("a", 3)
    with pytest.raises(InvalidTransitionError):
        req.move_to(RequestStatus.DECODING)  # must prefill first
    req.move_to(RequestStatus.PREFILLING)
    req.move_to(RequestStatus.DECODING)
    req.move_to(RequestStatus.FINISHED)
    with pytest.raises(InvalidTransitionError):
        req.move_to(RequestStatus.WAITING)


def test_token_budget_chunks_prefill_and_decodes_go_first() -> None:
    sched = Scheduler(KVCacheManager(64, 4), max_num_batched_tokens=10, max_num_seqs=8)
    long, short = make_request("long", 25), make_request("short", 3)
    sched.add(long)
    sched.add(short)
    out = sched.schedule()
    assert [(c.request_id, len(c.token_ids), c.sample) for c in out.chunks] == [("long", 10, False)]
    sched.update(out, {})
    out = sched.schedule()
    assert [(c.request_id, c.start, len(c.token_ids)) for c in out.chunks] == [("long", 10, 10)]
    sched.update(out, {})
    out = sched.schedule()  # last 5 prompt tokens, then the short prompt fits the budget
    assert [(c.request_id, c.start, len(c.token_ids), c.sample) for c in out.chunks] == [
        ("long", 20, 5, True),
        ("short", 0, 3, True),
    ]
    sched.update(out, {"long": 7, "short": 8})
    assert long.status is RequestStatus.DECODING and long.output_token_ids == [7]
    out = sched.schedule()
    assert [(c.request_id, c.token_ids, c.start) for c in out.chunks] == [
        ("long", [7], 25),
        ("short", [8], 3),
    ]


def test_preemption_when_blocks_run_out() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4)
    sched = Scheduler(kv, max_num_batched_tokens=64, max_num_seqs=8)
    a, b = make_request("a", 8, max_tokens=20), make_request("b", 8, max_tokens=20)
    sched.add(a)
    sched.add(b)
    out = sched.schedule()
    sched.update(out, {"a": 1, "b": 2})
    kv.check_integrity()
    # Both need a third block for their next token; only b (admitted last) is preempted.
    out = sched.schedule()
    assert out.preempted == ["b"] and [c.request_id for c in out.chunks] == ["a"]
    assert b.status is RequestStatus.WAITING and b.num_computed_tokens == 0
    assert sched.waiting[0] is b
    kv.check_integrity()
    sched.finish(a, RequestStatus.FINISHED)
    # b comes back: its two full prompt blocks are still cached, so only its output token
    # is recomputed.
    out = sched.schedule()
    assert [(c.request_id, c.start, len(c.token_ids)) for c in out.chunks] == [("b", 8, 1)]
    assert b.num_cached_tokens == 0  # preemption is not a prefix hit of the original prompt
    kv.check_integrity()


def test_prefill_only_request_parks_with_its_blocks() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4)
    sched = Scheduler(kv, max_num_batched_tokens=64, max_num_seqs=8)
    req = make_request("p", 10)
    req.prefill_only = True
    sched.add(req)
    sched.update(sched.schedule(), {"p": 3})
    assert req.status is RequestStatus.SENDING_KV and "p" in sched.parked
    assert not sched.schedule().chunks
    assert len(kv.block_table("p")) == 3
    sched.finish(req, RequestStatus.FINISHED)
    kv.check_integrity()
    assert kv.num_free_blocks == 8
