"""The connector's scheduler half in isolation: which requests send or load, and when.

vLLM's scheduler objects are stood in for by plain namespaces carrying only the fields the
connector reads (request ids, prompt lengths, block ids, per-step progress), so each rule
is checked in milliseconds; the real scheduler drives it in test_vllm_handoff.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tests.integrations.vllm_procs import require_vllm

require_vllm()

# After the skip: these import vLLM.
from prfaas.integrations.vllm.metadata import LoadSpec, SendSpec  # noqa: E402
from prfaas.integrations.vllm.scheduler_side import HandoffScheduler  # noqa: E402

BLOCK = 32


def request(rid: str, prompt_len: int, params: dict[str, Any] | None) -> Any:
    return SimpleNamespace(
        request_id=rid,
        num_prompt_tokens=prompt_len,
        prompt_token_ids=list(range(1000, 1000 + prompt_len)),
        kv_transfer_params=params,
        cache_salt=None,
    )


def blocks(ids: list[int]) -> Any:
    return SimpleNamespace(get_block_ids=lambda: (ids,))


def step(
    new: list[tuple[str, int]], cached: list[tuple[str, int]], scheduled: dict[str, int]
) -> Any:
    return SimpleNamespace(
        scheduled_new_reqs=[SimpleNamespace(req_id=r, num_computed_tokens=n) for r, n in new],
        scheduled_cached_reqs=SimpleNamespace(
            req_ids=[r for r, _ in cached], num_computed_tokens=[n for _, n in cached]
        ),
        num_scheduled_tokens=scheduled,
    )


def test_decode_loads_past_its_prefix_hit_once_and_holds_blocks_while_loading() -> None:
    sched = HandoffScheduler(BLOCK)
    req = request("r1", 100, {"prfaas_transfer_id": "t1"})
    sched.on_new_request(req)
    assert sched.num_tokens_to_load(req, 32) == 100 - 1 - 32  # the last token is computed here
    sched.after_alloc(req, blocks([7, 8, 9, 10]), 67)
    meta = sched.build_metadata(step([], [], {}))
    prompt = tuple(req.prompt_token_ids)  # the whole prompt: the loader hashes it
    assert meta.loads == [LoadSpec("r1", "t1", (8, 9, 10), 32, 99, prompt)] and not meta.sends
    assert sched.build_metadata(step([], [], {})).loads == []  # issued once
    assert sched.num_tokens_to_load(req, 0) == 0  # a failed load is recomputed, not retried
    assert sched.on_finished(req) == (True, None)  # aborted mid-load: blocks held ...
    sched.on_worker_output(SimpleNamespace(finished_recving={"r1"}))
    assert sched.on_finished(req) == (False, None)  # ... until the worker says it ended


def test_prefill_sends_in_the_step_that_completes_the_prompt() -> None:
    sched = HandoffScheduler(BLOCK)
    manager = SimpleNamespace(get_block_ids=lambda rid: ([3, 4, 5],))
    sched.bind(manager)
    req = request("p1", 80, {"prfaas_transfer_id": "t9", "prfaas_send_to": "h:1"})
    sched.on_new_request(req)
    assert sched.num_tokens_to_load(req, 0) == 0  # a prefill instance loads nothing
    assert sched.build_metadata(step([("p1", 0)], [], {"p1": 48})).sends == []  # chunk 1
    meta = sched.build_metadata(step([], [("p1", 48)], {"p1": 32}))  # chunk 2 ends it
    prompt = tuple(req.prompt_token_ids)
    assert meta.sends == [SendSpec("p1", "t9", ("h", 1), (3, 4, 5), 80, prompt)]
    assert sched.build_metadata(step([], [("p1", 80)], {"p1": 1})).sends == []  # once
    assert sched.on_finished(req) == (False, None)  # rows were copied: free at once


def test_requests_without_or_with_bad_params_are_served_locally() -> None:
    sched = HandoffScheduler(BLOCK)
    plain, bad = request("a", 50, None), request("b", 50, {"prfaas_transfer_id": 3})
    embeds = request("c", 50, {"prfaas_transfer_id": "t3"})
    embeds.prompt_token_ids = None  # prompt embeddings: nothing to hash, so no hand-off
    for req in (plain, bad, embeds):
        sched.on_new_request(req)
        assert sched.num_tokens_to_load(req, 0) == 0
    progress = {"a": 50, "b": 50, "c": 50}
    meta = sched.build_metadata(step([("a", 0), ("b", 0), ("c", 0)], [], progress))
    assert meta.sends == [] and meta.loads == []
