"""The conversation workload: growing contexts, shared system prompts, determinism, and the
chat preset's figures; and the TTFT policy running on it in the simulator."""

from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import pytest

from prfaas.sim.config import load_sim_config, settings
from prfaas.sim.conversation import BlockNames, ConversationWorkload
from prfaas.sim.routing_eval import beats_blind, ideal_hit_rate
from prfaas.sim.runner import SimContext, conversation_workload, run_config, setup_for, workload
from prfaas.sim.simulator import Simulator

ROOT = Path(__file__).parents[2]
SMALL = ConversationWorkload(duration_s=600.0, session_rate_rps=0.5, mean_turns=4.0, seed=3)


def test_each_turn_extends_the_previous_prompt_and_its_answer() -> None:
    turns = SMALL.turns()
    by_session = defaultdict(list)
    for t in turns:
        by_session[t.session].append(t)
    multi = [ts for ts in by_session.values() if len(ts) > 2]
    assert len(multi) > 10
    for ts in multi:
        for prev, cur in pairwise(ts):
            assert cur.turn == prev.turn + 1 and cur.arrival_s >= prev.arrival_s + SMALL.min_gap_s
            # previous prompt, then the previous answer, then one new user message
            assert cur.segments[: len(prev.segments)] == prev.segments
            assert cur.segments[len(prev.segments)][1] == prev.output_tokens
            assert len(cur.segments) == len(prev.segments) + 2
            assert cur.prompt_len > prev.prompt_len + prev.output_tokens


def test_a_turn_shares_the_previous_turns_full_blocks_and_no_more() -> None:
    by_session = defaultdict(list)
    for t, r in zip(SMALL.turns(), SMALL, strict=True):
        assert (r.arrival_s, r.prompt_len) == (t.arrival_s, t.prompt_len)
        assert len(r.hash_ids) == -(-r.prompt_len // SMALL.block_tokens)
        by_session[t.session].append(r)
    checked = 0
    for reqs in by_session.values():
        for prev, cur in pairwise(reqs):
            full = prev.prompt_len // SMALL.block_tokens
            assert cur.hash_ids[:full] == prev.hash_ids[:full]
            assert cur.hash_ids[full] != prev.hash_ids[min(full, len(prev.hash_ids) - 1)]
            checked += 1
    assert checked > 50


def test_sessions_with_one_system_prompt_share_its_blocks_others_do_not() -> None:
    w = ConversationWorkload(duration_s=300.0, system_prompts=2, system_tokens=2048, seed=1)
    firsts: dict[int, list[tuple[int, ...]]] = defaultdict(list)
    for t, r in zip(w.turns(), w, strict=True):
        if t.turn == 0:
            firsts[t.segments[0][0]].append(r.hash_ids)
    assert set(firsts) == {0, 1} and all(len(v) > 5 for v in firsts.values())
    for ids in firsts.values():
        assert len({h[:4] for h in ids}) == 1  # 2,048 tokens = 4 shared blocks
        assert len({h[4] for h in ids}) == len(ids)  # then each session's own message
    assert firsts[0][0][0] != firsts[1][0][0]


def test_block_names_chain_on_contents() -> None:
    names = BlockNames(block_tokens=4)
    a = names.hash_ids(((0, 6),))  # one full block, then a partial one
    b = names.hash_ids(((0, 6), (1, 2)))  # the same tokens, the partial block completed
    c = names.hash_ids(((2, 4), (0, 6)))  # same segment after a different parent
    assert len(a) == 2 and len(b) == 2 and a[0] == b[0] and a[1] != b[1]
    assert len(c) == 3 and c[1] != a[0] and len(set(a + b + c)) == 6


def test_seeded_and_deterministic() -> None:
    def shape(w: ConversationWorkload) -> list[tuple[float, int, int, tuple[int, ...]]]:
        return [(r.arrival_s, r.prompt_len, r.output_len, r.hash_ids) for r in w]

    same = ConversationWorkload(duration_s=600.0, session_rate_rps=0.5, mean_turns=4.0, seed=3)
    assert shape(SMALL) == shape(same)
    other = ConversationWorkload(duration_s=600.0, session_rate_rps=0.5, mean_turns=4.0, seed=4)
    assert shape(SMALL) != shape(other)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="mean_turns >= 1"):
        ConversationWorkload(mean_turns=0.5)
    with pytest.raises(ValueError, match="no room"):
        ConversationWorkload(system_tokens=1000, max_context_tokens=1000)


def test_the_chat_preset_resembles_chat_traffic() -> None:
    """An hour of the defaults: about 12,000 requests, mean prompt about 12K tokens, about
    37% of prompt tokens reusable with an unbounded shared cache."""
    reqs = list(ConversationWorkload())
    mean_prompt = sum(r.prompt_len for r in reqs) / len(reqs)
    ideal = ideal_hit_rate(reqs, 512, 0.0, 3600.0)
    assert 11_000 <= len(reqs) <= 13_000
    assert 11_000 <= mean_prompt <= 13_500
    assert 0.33 <= ideal <= 0.41
    assert max(r.arrival_s for r in reqs) < 3600.0


def test_ideal_hit_rate_counts_full_blocks_and_one_computed_token() -> None:
    from prfaas.sim.request import SimRequest

    reqs = [
        SimRequest("a", 0.0, 1024, 1, (1, 2)),
        SimRequest("b", 1.0, 1024, 1, (1, 2)),  # all cached but its last token: 1,023
        SimRequest("c", 2.0, 1500, 1, (1, 5, 6)),  # one block: 512
    ]
    assert ideal_hit_rate(reqs, 512, 0.0, 10.0) == pytest.approx((1023 + 512) / 3548)
    assert ideal_hit_rate(reqs, 512, 1.5, 10.0) == pytest.approx(512 / 1500)  # warm-up seen


def test_beats_blind_needs_all_three_figures() -> None:
    blind = {"cache_hit_rate": 0.2, "ttft_mean_s": 1.0, "ttft_p99_s": 3.0}
    assert beats_blind({"cache_hit_rate": 0.3, "ttft_mean_s": 0.9, "ttft_p99_s": 2.9}, blind)
    assert not beats_blind({"cache_hit_rate": 0.3, "ttft_mean_s": 1.1, "ttft_p99_s": 2.9}, blind)
    assert not beats_blind({"cache_hit_rate": 0.3, "ttft_mean_s": 0.9, "ttft_p99_s": None}, blind)
    assert not beats_blind({"cache_hit_rate": 0.2, "ttft_mean_s": 0.9, "ttft_p99_s": 2.9}, blind)
    none = {"cache_hit_rate": 0.0, "ttft_mean_s": 1.0, "ttft_p99_s": 3.0}
    aware = {"cache_hit_rate": 0.0, "ttft_mean_s": 0.9, "ttft_p99_s": 2.9, "ideal_hit_rate": 0.0}
    assert beats_blind(aware, none)  # nothing to reuse: an equal hit rate passes


def test_ttft_policy_runs_the_conversation_and_every_dispatch_is_finished() -> None:
    loaded = load_sim_config(ROOT / "examples/paper/routing.yaml")
    scenario = loaded.scenarios["conversation"]
    s = settings(loaded.defaults, {"duration_s": 240.0, "warmup_s": 30.0}, "test")
    ctx = SimContext.load(loaded.plan_path)
    assert scenario.conversation is not None
    ctx = ctx.for_requests(list(conversation_workload(scenario.conversation, s)), s)
    setup = setup_for(ctx, "PrfaaS-PD", "prfaas-ttft", s, scenario)
    assert setup.policy.instance_choice is not None

    sim = Simulator(setup.fleet, setup.policy, workload(ctx, s, scenario, None), run_config(s))
    result = sim.run()
    assert result.summary["requests"] == result.summary["completed"] > 500
    assert result.summary["cache_hit_rate"] > 0.1
    assert len(sim.router.inflight) == 0  # the simulator reported every prefill's end


def test_a_scenario_takes_a_trace_or_a_conversation_not_both(tmp_path: Path) -> None:
    from prfaas.sim.config import SimConfigError

    path = tmp_path / "s.yaml"
    path.write_text(
        f"plan: {ROOT / 'examples/paper/case-study.yaml'}\n"
        "scenarios:\n  x:\n    kind: routing\n    trace: {path: a.jsonl}\n"
        "    conversation: {mean_turns: 2}\n"
    )
    with pytest.raises(SimConfigError, match=r"scenarios\.x: give a trace or a conversation"):
        load_sim_config(path)
