"""Hybrid prefix cache in the engine: MLA blocks plus a KDA snapshot at exactly the hit length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from prfaas.engine.engine import Engine
from prfaas.kvcache.hybrid import HybridKVCacheManager, StateCacheConfig
from tests.engine.hybrid_helpers import (
    PATTERNS,
    greedy,
    kimi_engine,
    prompt_of,
    save_kimi_checkpoint,
)

BLOCK = 16


# Tiny tensors: intra-op threads only add synchronisation (and stall on shared cores).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_kimi_checkpoint(tmp_path_factory.mktemp("kimi-3to1"), *PATTERNS["3to1_moe"])


def _generate_counting(
    engine: Engine, prompt: list[int], max_tokens: int = 16
) -> tuple[list[int], int, int]:
    """(output tokens, prompt tokens served from the cache, tokens the model computed)."""
    computed = 0
    execute = engine.runner.execute

    def spy(out: Any) -> torch.Tensor:
        nonlocal computed
        computed += out.num_tokens
        return execute(out)

    engine.runner.execute = spy  # type: ignore[method-assign]
    try:
        req = engine.add_request(prompt, greedy(max_tokens))
        while engine.has_unfinished():
            engine.step()
            engine.check_integrity()
    finally:
        engine.runner.execute = execute  # type: ignore[method-assign]
    return list(req.output_token_ids), req.num_cached_tokens, computed


def _states(engine: Engine) -> Any:
    assert isinstance(engine.kv, HybridKVCacheManager)
    return engine.kv.states


def test_shared_three_block_prefix_reuses_blocks_and_snapshot(
    checkpoint: Path, cache_dir: Path
) -> None:
    shared = prompt_of(3 * BLOCK, seed=11)
    first, second = shared + prompt_of(7, seed=12), shared + prompt_of(9, seed=13)
    cold = kimi_engine(checkpoint, cache_dir, enable_prefix_caching=False)
    cold_tokens, _, cold_computed = _generate_counting(cold, second)

    warm = kimi_engine(checkpoint, cache_dir)
    _generate_counting(warm, first)
    tokens, cached, computed = _generate_counting(warm, second)
    assert cached == 3 * BLOCK  # every MLA block up to 48 and the KDA snapshot at 48
    assert computed == cold_computed - 3 * BLOCK  # measured: 48 fewer tokens through the model
    assert tokens == cold_tokens
    assert warm.kv.usage == 0.0


def test_hit_stops_at_the_last_snapshot(checkpoint: Path, cache_dir: Path) -> None:
    # Snapshots every 2 blocks (and at the prompt's last block boundary, 48): a later prompt
    # sharing only 3 blocks of a 5-block prompt has MLA blocks up to 48 but snapshots at 32
    # and 64 (and 80), so it may reuse 32 tokens only.
    engine = kimi_engine(checkpoint, cache_dir, state=StateCacheConfig(2 * BLOCK, max_snapshots=16))
    cold = kimi_engine(checkpoint, cache_dir, enable_prefix_caching=False)
    long_prompt = prompt_of(5 * BLOCK + 3, seed=21)
    _generate_counting(engine, long_prompt, max_tokens=2)
    assert _states(engine).num_snapshots == 3  # 32, 64 (interval) and 80 (prompt end)
    prompt = long_prompt[: 3 * BLOCK] + prompt_of(5, seed=22)
    tokens, cached, _ = _generate_counting(engine, prompt)
    assert cached == 2 * BLOCK
    assert tokens == _generate_counting(cold, prompt)[0]


def test_snapshots_stay_within_their_cap(checkpoint: Path, cache_dir: Path) -> None:
    state = StateCacheConfig(snapshot_interval=BLOCK, max_snapshots=2)
    engine = kimi_engine(checkpoint, cache_dir, state=state)
    free_blocks = engine.kv.num_free_blocks
    for seed in range(4):
        _generate_counting(engine, prompt_of(4 * BLOCK + 1, seed=30 + seed), max_tokens=4)
        assert _states(engine).num_snapshots <= 2
    # Snapshots live in their own slots: every KV block is free again.
    assert engine.kv.num_free_blocks == free_blocks
    # The most recent prompt's newest snapshots survived (LRU): its prefix hits again.
    again = prompt_of(4 * BLOCK + 1, seed=33)[: 4 * BLOCK] + [5, 6]
    _, cached, _ = _generate_counting(engine, again)
    assert cached == 4 * BLOCK


def test_preempted_hybrid_request_resumes_exactly(checkpoint: Path, cache_dir: Path) -> None:
    # A pool this small forces preemption; the victim recomputes (or hits its own snapshot).
    tight = kimi_engine(checkpoint, cache_dir, num_kv_blocks=7, max_num_batched_tokens=32)
    ref = kimi_engine(checkpoint, cache_dir, enable_prefix_caching=False)
    prompts = [prompt_of(40, seed=41), prompt_of(40, seed=42)]
    reqs = [tight.add_request(p, greedy(24)) for p in prompts]
    while tight.has_unfinished():
        tight.step()
        tight.check_integrity()
    assert sum(r.num_preemptions for r in reqs) > 0
    for req, prompt in zip(reqs, prompts, strict=True):
        assert req.output_token_ids == _generate_counting(ref, prompt, max_tokens=24)[0]


def test_follow_up_turn_resumes_from_a_snapshot_taken_while_decoding(
    checkpoint: Path, cache_dir: Path
) -> None:
    engine = kimi_engine(checkpoint, cache_dir, state=StateCacheConfig(BLOCK, max_snapshots=16))
    cold = kimi_engine(checkpoint, cache_dir, enable_prefix_caching=False)
    prompt = prompt_of(20, seed=51)
    answer, _, _ = _generate_counting(engine, prompt, max_tokens=30)  # decodes past 32 and 48
    follow_up = prompt + answer[:29] + prompt_of(6, seed=52)  # the stored answer ends at 49
    tokens, cached, _ = _generate_counting(engine, follow_up)
    assert cached == 3 * BLOCK  # the decode step that completed block 3 left a snapshot
    assert tokens == _generate_counting(cold, follow_up)[0]
