"""Continuous batching gives each request the tokens it would get alone."""

from __future__ import annotations

import random
from pathlib import Path

from prfaas.engine.sampling_params import SamplingParams
from tests.engine.helpers import make_engine


def test_sixteen_concurrent_requests_match_running_alone(tiny_llama: Path, cache_dir: Path) -> None:
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 256) for _ in range(rng.randrange(1, 90))] for _ in range(16)]
    max_tokens = [rng.randrange(1, 40) for _ in range(16)]
    alone = make_engine(tiny_llama, cache_dir)
    expected = []
    for prompt, n in zip(prompts, max_tokens, strict=True):
        req = alone.add_request(
            prompt, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
        )
        while alone.has_unfinished():
            alone.step()
        expected.append(req.output_token_ids)
    # A small token budget and pool force chunked prefill, mixing and preemption.
    batched = make_engine(tiny_llama, cache_dir, max_num_batched_tokens=64, num_kv_blocks=40)
    reqs = [
        batched.add_request(p, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
        for p, n in zip(prompts, max_tokens, strict=True)
    ]
    steps = 0
    while batched.has_unfinished():
        out = batched.step()
        batched.check_integrity()
        steps += 1
        assert steps < 5000
        assert all(d.request_id for d in out)
    assert [r.output_token_ids for r in reqs] == expected
    assert batched.kv.usage == 0.0


def test_seeded_sampling_is_reproducible_in_any_batch(tiny_llama: Path, cache_dir: Path) -> None:
    engine = make_engine(tiny_llama, cache_dir)
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    a = engine.add_request(list(range(3, 30)), params)
    while engine.has_unfinished():
        engine.step()
    b = engine.add_request(list(range(3, 30)), params)
    engine.add_request(list(range(40, 60)), SamplingParams(max_tokens=12, temperature=1.0))
    while engine.has_unfinished():
        engine.step()
    assert a.output_token_ids == b.output_token_ids
    engine.check_integrity()
