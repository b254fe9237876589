"""A real hybrid engine's cache events, fed to the kv index, predict its prefix hits exactly.

Tiny Kimi Linear checkpoint, snapshots every 2 blocks under a cap of 3 (so they are
recycled): before each request the index (told the instance is hybrid) is asked about the
blocks the engine may take; the engine's measured hit must equal its answer, and the
snapshots the index holds must be those the engine holds.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from prfaas.kvcache.hybrid import HybridKVCacheManager, StateCacheConfig
from prfaas.router.kv_index import KvIndex
from tests.engine.hybrid_helpers import (
    PATTERNS,
    greedy,
    kimi_engine,
    prompt_of,
    save_kimi_checkpoint,
)

BLOCK = 16

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_kimi_checkpoint(tmp_path_factory.mktemp("kimi-events"), *PATTERNS["3to1_moe"])


def test_index_fed_by_engine_events_predicts_its_hits(checkpoint: Path, cache_dir: Path) -> None:
    state = StateCacheConfig(snapshot_interval=2 * BLOCK, max_snapshots=3)
    engine = kimi_engine(checkpoint, cache_dir, state=state)
    assert engine.hybrid
    kv = engine.kv
    assert isinstance(kv, HybridKVCacheManager)
    index = KvIndex()
    index.register("w", "pd", 1, hybrid=True)
    rng = random.Random(0)
    stems = [prompt_of(6 * BLOCK, seed=60 + k) for k in range(2)]
    hits, cut_back = [], 0
    for seq in range(1, 15):
        stem = rng.choice(stems)
        prompt = stem[: rng.randrange(BLOCK, len(stem) + 1)] + prompt_of(rng.randrange(1, 20), seq)
        req = engine.add_request(prompt, greedy(1))
        may_take = req.block_hashes[: (len(prompt) - 1) // BLOCK]
        predicted = index.prefix_blocks(may_take).get("w", 0)
        blocks_held = index._block_runs(may_take).get("w", 0)
        while engine.has_unfinished():
            engine.step()
            engine.check_integrity()
        assert req.num_cached_tokens == predicted * BLOCK, (seq, blocks_held)
        hits.append(predicted)
        cut_back += predicted < blocks_held
        assert index.apply(
            "w", 1, seq, [(e.block_hash, e.stored, e.snapshot) for e in kv.drain_events()]
        )
        assert index._snapshots["w"] == set(kv.states._cached)
    # The sequence exercised both sides of the rule: hits, and block runs cut back.
    assert any(hits) and cut_back > 0, (hits, cut_back)
