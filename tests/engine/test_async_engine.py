"""AsyncEngine: the real engine on its own thread, driven from asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.engine import Engine
from prfaas.engine.handoff import KvPayload
from prfaas.engine.sampling_params import SamplingParams
from prfaas.engine.streams import PromptTokens
from tests.engine.helpers import export_prefill, make_engine

T = TypeVar("T")
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
PROMPTS = [[(7 * i + k) % 250 + 3 for i in range(n)] for k, n in ((1, 5), (2, 19), (3, 40))]


@pytest.fixture(scope="module")
def engine(tiny_llama: Path, cache_dir: Path) -> Engine:
    return make_engine(tiny_llama, cache_dir)


@pytest.fixture(scope="module")
def engine_b(tiny_llama: Path, cache_dir: Path) -> Engine:
    return make_engine(tiny_llama, cache_dir)


def run(engines: list[Engine], body: Callable[..., Awaitable[T]]) -> T:
    """Start an AsyncEngine per engine, run ``body(*async_engines)``, check pools, shut down."""

    async def main() -> T:
        aes = [AsyncEngine(e) for e in engines]
        for ae in aes:
            ae.start()
        try:
            result = await body(*aes)
            for ae in aes:
                await ae.call(lambda e: e.check_integrity())
                assert await ae.call(lambda e: e.has_unfinished()) is False
            return result
        finally:
            for ae in aes:
                await ae.shutdown()

    return asyncio.run(main())


async def collect(ae: AsyncEngine, prompt: list[int], rid: str) -> list[int]:
    return [t async for d in ae.generate(prompt, GREEDY, rid) for t in d.new_token_ids]


def test_concurrent_equals_sequential(engine: Engine) -> None:
    async def body(ae: AsyncEngine) -> tuple[list[list[int]], list[list[int]]]:
        seq = [await collect(ae, p, f"s{i}") for i, p in enumerate(PROMPTS)]
        conc = await asyncio.gather(*(collect(ae, p, f"c{i}") for i, p in enumerate(PROMPTS)))
        return seq, list(conc)

    seq, conc = run([engine], body)
    assert conc == seq
    assert all(len(toks) == GREEDY.max_tokens for toks in seq)


def test_input_error_raises_before_any_delta(engine: Engine) -> None:
    async def body(ae: AsyncEngine) -> None:
        with pytest.raises(ValueError, match="empty"):
            await collect(ae, [], "bad")
        with pytest.raises(ValueError, match="context length"):
            await collect(ae, [5] * 600, "long")
        assert await collect(ae, PROMPTS[0], "bad") != []  # the id is free again

    run([engine], body)


def test_cancel_aborts_and_frees_blocks(engine: Engine) -> None:
    long = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)

    async def body(ae: AsyncEngine) -> None:
        got: list[int] = []

        async def consume() -> None:
            async for d in ae.generate(PROMPTS[2], long, "cancelled"):
                got.extend(d.new_token_ids)

        task = asyncio.create_task(consume())
        while len(got) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # A consumer that just stops iterating (client gone) also aborts.
        stream = ae.generate(PROMPTS[1], long, "dropped")
        await anext(stream)
        await stream.aclose()
        await ae.call(lambda e: e.check_integrity())
        assert await ae.call(lambda e: e.kv.usage) == 0.0
        assert ae.stats().num_running == 0

    run([engine], body)


def test_decode_with_kv_equals_generate_and_reports_no_local_hit(
    engine: Engine, engine_b: Engine
) -> None:
    payload = export_prefill(engine, PROMPTS[2], GREEDY, "p")  # the sync path (LLM.prefill)
    assert payload.num_tokens == len(PROMPTS[2])

    async def body(b: AsyncEngine) -> tuple[list[int], list[int], int | None]:
        ref = await collect(b, PROMPTS[2], "ref")  # b now holds the prompt's full blocks

        async def ready() -> KvPayload:
            await asyncio.sleep(0.05)
            return payload

        got: list[int] = []
        first_cached = None
        async for d in b.decode_with_kv(PROMPTS[2], GREEDY, "d", ready(), deadline_s=5.0):
            if not got:
                first_cached = b.prompt_tokens("d")
            got += d.new_token_ids
        assert b.stats().fallbacks == 0
        return ref, got, first_cached

    ref, got, first_cached = run([engine_b], body)
    assert got == ref
    assert first_cached == PromptTokens(0, 0)  # the KV landed: nothing computed or hit here


def test_streamed_prefill_reports_its_real_prefix_hit(engine: Engine) -> None:
    class Discard:
        def begin(self) -> None:
            self.layers = 0

        def layer(self, layer_index: int, tensors: Any) -> None:
            self.layers += 1

    fresh = [(11 * i) % 250 + 3 for i in range(40)]  # 2 full blocks of 16 and a tail

    async def body(ae: AsyncEngine) -> tuple[int, int, int]:
        sink = Discard()
        first = await ae.prefill_streamed(fresh, GREEDY, "p1", sink)
        again = await ae.prefill_streamed(fresh, GREEDY, "p2", sink)
        assert first.first_token_id == again.first_token_id
        return first.num_cached_tokens, again.num_cached_tokens, sink.layers

    first, again, layers = run([engine], body)
    assert (first, again) == (0, 32)
    assert layers == len(engine.loaded.model.model.layers)


@pytest.mark.parametrize("failure", ["raises", "deadline"])
def test_failed_kv_falls_back_to_local_prefill(engine: Engine, failure: str) -> None:
    async def body(ae: AsyncEngine) -> tuple[list[int], list[int]]:
        ref = await collect(ae, PROMPTS[1], "ref")

        async def broken() -> KvPayload:
            if failure == "raises":
                raise ConnectionError("link cut")
            await asyncio.sleep(10)
            raise AssertionError("unreachable")

        before = ae.stats().fallbacks
        got: list[int] = []
        async for d in ae.decode_with_kv(PROMPTS[1], GREEDY, "d", broken(), deadline_s=0.1):
            if not got:  # prefilled here: the first block came from ref's prefix cache
                assert ae.prompt_tokens("d") == PromptTokens(16, len(PROMPTS[1]) - 16)
            got += d.new_token_ids
        assert ae.stats().fallbacks == before + 1
        return ref, got

    ref, got = run([engine], body)
    assert got == ref


def test_stats_and_cache_events(engine: Engine) -> None:
    async def body(ae: AsyncEngine) -> None:
        ae.drain_cache_events()
        fresh = [(13 * i) % 250 + 3 for i in range(40)]
        await collect(ae, fresh, "one")
        await collect(ae, fresh, "two")  # same prompt: its full blocks come from the cache
        for _ in range(2):  # the thread publishes after each batch of commands
            await ae.call(lambda e: None)
        stats = ae.stats()
        assert stats.num_prompt_tokens >= 80
        assert stats.num_cached_tokens >= 32
        assert any(ev.stored for ev in ae.drain_cache_events())
        assert ae.drain_cache_events() == []

    run([engine], body)


def test_shutdown_ends_open_streams(engine: Engine) -> None:
    from prfaas.engine.async_engine import EngineError

    long = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)

    async def main() -> None:
        ae = AsyncEngine(engine)
        ae.start()
        stream = ae.generate(PROMPTS[0], long, "open")
        await anext(stream)
        await ae.shutdown()
        with pytest.raises(EngineError):
            async for _ in stream:
                pass
        with pytest.raises(EngineError):
            await collect(ae, PROMPTS[0], "late")
        engine.check_integrity()  # the thread aborted what was running before it ended
        assert not engine.has_unfinished()

    asyncio.run(main())


def test_thread_sleeps_while_every_request_waits_for_kv(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = 0
    step = engine.step

    def counting_step() -> list[Any]:
        nonlocal steps
        steps += 1
        return step()

    monkeypatch.setattr(engine, "step", counting_step)

    async def body(ae: AsyncEngine) -> list[int]:
        async def slow() -> KvPayload:
            await asyncio.sleep(0.5)
            raise ConnectionError("never came")

        deltas = ae.decode_with_kv(PROMPTS[0], GREEDY, "parked", slow(), deadline_s=5.0)
        got = [t async for d in deltas for t in d.new_token_ids]
        return got

    got = run([engine], body)
    assert len(got) == GREEDY.max_tokens
    assert steps < 3 * GREEDY.max_tokens  # not a busy loop during the 0.5 s wait
