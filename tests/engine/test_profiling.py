"""Start-up profiling runs on a real engine: measured, no prefix hits, pools clean after."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.commands import Admit
from prfaas.engine.profiling import profile_engine
from prfaas.engine.sampling_params import SamplingParams
from prfaas.kvcache.spec import kv_bytes
from prfaas.messages import ProfileRequest, ProfileResult
from tests.engine.helpers import make_engine


def profile(
    tiny_llama: Path, cache_dir: Path, request: ProfileRequest
) -> tuple[ProfileResult, int]:
    engine = make_engine(tiny_llama, cache_dir)

    async def main() -> tuple[ProfileResult, int]:
        ae = AsyncEngine(engine)
        ae.start()
        try:
            result = await profile_engine(
                ae,
                request,
                vocab_size=engine.vocab_size,
                layer_specs=engine.layer_specs,
                block_size=engine.kv.block_size,
            )
            await ae.call(lambda e: e.check_integrity())
            assert await ae.call(lambda e: e.has_unfinished()) is False
            return result, ae.stats().num_cached_tokens
        finally:
            await ae.shutdown()

    return asyncio.run(main())


def test_prefill_and_decode_are_measured_without_prefix_hits(
    tiny_llama: Path, cache_dir: Path
) -> None:
    request = ProfileRequest(num_tokens=[200, 32, 100, 32], repeats=2, decode_batch=3)
    result, cached = profile(tiny_llama, cache_dir, request)
    assert result.num_tokens == [32, 100, 200]  # sorted, once each
    assert all(s > 0 for s in result.prefill_s) and result.decode_step_s > 0
    assert result.decode_batch == 3
    engine = make_engine(tiny_llama, cache_dir)
    assert result.kv_bytes == [kv_bytes(engine.layer_specs, n) for n in (32, 100, 200)]
    assert cached == 0  # repeats of a length shared no block: fresh tokens, fresh salts


def test_a_length_the_engine_cannot_serve_is_refused_before_running(
    tiny_llama: Path, cache_dir: Path
) -> None:
    with pytest.raises(ValueError, match="exceed"):
        profile(tiny_llama, cache_dir, ProfileRequest(num_tokens=[32, 512]))


def test_stats_count_the_prompt_tokens_not_yet_prefilled(tiny_llama: Path, cache_dir: Path) -> None:
    """What workers report as ``queued_tokens`` in their heartbeats: waiting prompts whole,
    a prompt being prefilled in chunks by what is left of it, decoding requests nothing."""
    engine = make_engine(tiny_llama, cache_dir, max_num_batched_tokens=64)
    loop = asyncio.new_event_loop()
    try:
        thread = AsyncEngine(engine)  # never started: this test is its thread
        thread._loop = loop
        params = SamplingParams(max_tokens=4, temperature=0)
        for i, n in enumerate((100, 30)):
            prompt = [(5 * k + i) % 250 + 3 for k in range(n)]
            thread._execute(Admit(prompt, params, f"r{i}"), None)
        thread._publish()
        assert thread.stats().num_queued_tokens == 130
        thread._step()  # 64 tokens of r0's prompt
        thread._publish()
        assert thread.stats().num_queued_tokens == 130 - 64
        while thread.stats().num_queued_tokens:
            thread._step()
            thread._publish()
        assert engine.has_unfinished()  # decoding: no prompt tokens left to prefill
    finally:
        loop.close()
