"""Prefill token-budget batching and decode continuous batching, on their own."""

import pytest

from prfaas.planner.profile import TableProfile
from prfaas.router.kv_index import KvIndex
from prfaas.router.types import RouteDecision
from prfaas.sim.build import prefill_cost
from prfaas.sim.cache import BlockLru
from prfaas.sim.instances import DecodeInstance, PrefillInstance
from prfaas.sim.request import SimRequest

PROFILE = TableProfile((1000.0, 2000.0), (1.0, 2.0), fit="interp")  # T(l) = l / 1000 s


def request(name: str, prompt_len: int, hash_ids: tuple[int, ...] = ()) -> SimRequest:
    r = SimRequest(name, 0.0, prompt_len, 4, hash_ids)
    r.decision = RouteDecision(name, "pd-p", "pd", "p0", "d0", 0, prompt_len)
    return r


def prefill(budget: int, cache_blocks: int = 0) -> PrefillInstance:
    index = KvIndex()
    index.register("p0", "pd")
    cache = BlockLru("p0", cache_blocks, index, 0)
    return PrefillInstance("p0", "pd", prefill_cost(PROFILE, 8192), budget, cache, 100)


def test_batches_fill_the_token_budget_in_arrival_order() -> None:
    inst = prefill(budget=1000)
    for name, n in (("a", 400), ("b", 500), ("c", 200), ("d", 50)):
        inst.enqueue(request(name, n))
    assert inst.queued_tokens == 1150
    assert inst.start_batch(0.0) == pytest.approx(0.9)  # a + b; c does not fit (FCFS, no skip)
    assert [r.request_id for r in inst.running] == ["a", "b"]
    assert inst.start_batch(0.0) is None  # busy
    inst.finish_batch(0.9)
    assert inst.start_batch(0.9) == pytest.approx(0.25)  # c + d
    assert inst.queued_tokens == 0


def test_a_prompt_over_budget_runs_alone_and_hits_its_cache() -> None:
    inst = prefill(budget=1000, cache_blocks=100)
    inst.enqueue(request("a", 3000, (1, 2, 3)))
    assert inst.start_batch(0.0) == pytest.approx(3.0)
    inst.finish_batch(3.0)
    again = request("b", 3000, (1, 2, 3))
    inst.enqueue(again)
    assert inst.start_batch(3.0) == pytest.approx(2.7)  # 300 tokens cached, 2700 computed
    assert again.cached_tokens == 300


def test_decode_slots_align_to_steps_and_queue_when_full() -> None:
    dec = DecodeInstance("d0", "pd", max_batch_size=2, step_s=0.1)
    reqs = [request(n, 10) for n in "abc"]
    dec.waiting.extend(reqs)
    started = dec.admit(0.25)
    assert [(round(t, 6), r.request_id) for t, r in started] == [(0.7, "a"), (0.7, "b")]
    assert reqs[0].first_token_s == pytest.approx(0.4)  # joins at 0.3, one step later
    assert list(dec.waiting) == [reqs[2]] and dec.view().load == 3
    dec.active -= 1
    assert [r.request_id for _, r in dec.admit(0.7)] == ["c"]
    assert reqs[2].first_token_s == pytest.approx(0.8)
