"""``n > 1`` through ``prfaas.LLM``: siblings share the prompt's blocks and draw their own
continuations, deterministically under a fixed seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prfaas.engine.llm import LLM
from prfaas.engine.outputs import TokenDelta
from prfaas.engine.request import Request
from prfaas.engine.sampling_params import SamplingParams

PROMPT = [(7 * i + 3) % 250 + 3 for i in range(40)]  # 2 full blocks of 16 and a part
BLOCK = 16


def test_n_sequences_share_the_prompt_blocks(tiny_llama: Path, cache_dir: Path) -> None:
    llm = LLM(str(tiny_llama), cache_dir=cache_dir, num_kv_blocks=64, block_size=BLOCK)
    engine = llm.engine
    shared_refs: list[int] = []
    step = engine.step

    def spy() -> list[TokenDelta]:
        deltas = step()
        engine.check_integrity()
        tables = [engine.kv.block_table(r.request_id) for r in engine.scheduler.running]
        if len(tables) == 3:
            # Every running sibling's table starts with the same two full prompt blocks.
            assert len({tuple(t[:2]) for t in tables}) == 1
            shared_refs.extend(engine.kv.pool.ref_counts[b] for b in tables[0][:2])
        return deltas

    engine.step = spy  # type: ignore[method-assign]
    params = SamplingParams(n=3, max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    first = llm.generate(PROMPT, params)[0]
    assert shared_refs and set(shared_refs) == {3}
    texts = [tuple(o.token_ids) for o in first.outputs]
    assert [o.index for o in first.outputs] == [0, 1, 2]
    assert len(set(texts)) == 3, "each sibling draws its own continuation"
    assert first.num_cached_tokens == 0
    engine.step = step  # type: ignore[method-assign]
    again = llm.generate(PROMPT, params)[0]
    assert [tuple(o.token_ids) for o in again.outputs] == texts
    # Sequence 0 is the n=1 request with the same seed.
    one = llm.generate(
        PROMPT, SamplingParams(max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    )
    assert tuple(one[0].outputs[0].token_ids) == texts[0]
    engine.check_integrity()
    assert engine.kv.usage == 0.0


def test_siblings_hit_the_prefix_cache(tiny_llama: Path, cache_dir: Path) -> None:
    llm = LLM(str(tiny_llama), cache_dir=cache_dir, num_kv_blocks=64, block_size=BLOCK)
    admitted: list[Request] = []
    add = llm.engine.add_request

    def spy(*args: Any, **kw: Any) -> Request:
        admitted.append(add(*args, **kw))
        return admitted[-1]

    llm.engine.add_request = spy  # type: ignore[method-assign]
    llm.generate(PROMPT, SamplingParams(n=4, max_tokens=3, temperature=0.0, ignore_eos=True))
    assert [r.num_cached_tokens for r in admitted] == [0, 2 * BLOCK, 2 * BLOCK, 2 * BLOCK]


@pytest.mark.parametrize("n", [1, 2])
def test_n_with_unseeded_sampling_finishes(tiny_llama: Path, cache_dir: Path, n: int) -> None:
    llm = LLM(str(tiny_llama), cache_dir=cache_dir, num_kv_blocks=64)
    outs = llm.generate([PROMPT, PROMPT[:7]], SamplingParams(n=n, max_tokens=1))
    assert [len(o.outputs) for o in outs] == [n, n]
    assert all(o.finished for o in outs)
