"""Two worker processes' worth in one: a prefill and a decode ``Worker``, each hosting the
reference engine behind the seam (``InstanceEngine``), KV over real loopback TCP. What the
gateway reads from them is the engines' own truth: ``PrefillResult.cached_tokens`` and the
first ``TokenEvent.cached_tokens`` are real prefix hits (0 when the KV landed from the other
instance), and the prefill worker's heartbeat carries its link's egress."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from prfaas.config import EngineConfig
from prfaas.engine.engine import Engine
from prfaas.messages import (
    DecodeCommand,
    KvTarget,
    PrefillCommand,
    PrefillResult,
    SamplingSpec,
    TokenEvent,
)
from prfaas.worker import Worker, WorkerConfig
from prfaas.worker.reference import KvSettings, ReferenceEngine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = [(13 * i) % 200 + 5 for i in range(70)]  # 4 full blocks of 16 and a tail of 6
PARAMS = SamplingSpec(max_tokens=4, temperature=0.0, ignore_eos=True)


def make_worker(name: str, role: str, engine: Engine) -> Worker:
    config = WorkerConfig(
        name=name,
        cluster="local",
        role=role,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=1,
        gateway_urls=("http://127.0.0.1:1",),
        cluster_token="t",
        engine=engine.config,
    )
    return Worker(config, ReferenceEngine(engine.config, KvSettings(), engine=engine))


@pytest.fixture
def engines(tiny_llama: Path, cache_dir: Path) -> tuple[Engine, Engine]:
    """Fresh engines per test: each test's prefix hits are its own."""
    config = EngineConfig(model=str(tiny_llama), cache_dir=cache_dir, num_kv_blocks=64)
    return Engine(config), Engine(config)


def run(engines: tuple[Engine, Engine], body: Callable[[Worker, Worker], Awaitable[None]]) -> None:
    async def main() -> None:
        p = make_worker("p0", "prefill", engines[0])
        d = make_worker("d0", "decode", engines[1])
        await p.engine.start()
        await d.engine.start()
        try:
            await body(p, d)
        finally:
            await p.engine.stop()
            await d.engine.stop()

    asyncio.run(main())


def commands(d: Worker, request_id: str, prompt: list[int]) -> tuple[PrefillCommand, DecodeCommand]:
    facts = d.engine.facts
    prefill = PrefillCommand(
        request_id=request_id,
        prompt_token_ids=prompt,
        params=PARAMS,
        tenant_salt_hex="",
        target=KvTarget(host=facts.kv_host, port=facts.kv_port),
        deadline_s=20.0,
    )
    decode = DecodeCommand(
        request_id=request_id,
        prompt_token_ids=prompt,
        params=PARAMS,
        tenant_salt_hex="",
        expect_kv=True,
        deadline_s=20.0,
    )
    return prefill, decode


async def events(d: Worker, cmd: DecodeCommand, reserved: bool = True) -> list[TokenEvent]:
    """The token events; a stream that expects KV first says whether blocks are held."""
    got = [event async for event in d.engine.decode(cmd)]
    if cmd.expect_kv:
        assert got[0].reserved is reserved and not got[0].token_ids
        got = got[1:]
    assert all(e.reserved is None for e in got)
    return got


async def handoff(p: Worker, d: Worker, request_id: str) -> tuple[PrefillResult, list[TokenEvent]]:
    prefill, decode = commands(d, request_id, PROMPT)
    decoded = asyncio.ensure_future(events(d, decode))
    result = await p.engine.prefill(prefill)
    return result, await decoded


def test_cached_tokens_are_each_engines_real_prefix_hit(engines: tuple[Engine, Engine]) -> None:
    run(engines, cached_tokens_are_real)


async def cached_tokens_are_real(p: Worker, d: Worker) -> None:
    first, first_events = await handoff(p, d, "r1")
    again, again_events = await handoff(p, d, "r2")
    assert first.ok and again.ok
    assert (first.cached_tokens, again.cached_tokens) == (0, 64)  # p0 hit its 4 full blocks
    # The KV landed from p0 both times: nothing was computed or hit on d0.
    assert first_events[0].cached_tokens == again_events[0].cached_tokens == 0
    assert [e.token_ids for e in first_events] == [e.token_ids for e in again_events]
    assert all(e.cached_tokens == 0 for e in first_events[1:])

    # d0 prefills the prompt itself: its own hit, the blocks that landed there.
    _, local = commands(d, "r3", PROMPT)
    local_events = await events(d, local.model_copy(update={"expect_kv": False}))
    assert local_events[0].cached_tokens == 64
    # The fallback (the KV will not come) reports d0's own hit too.
    _, fallback = commands(d, "r4", PROMPT)
    stream = aiter(d.engine.decode(fallback))
    assert (await anext(stream)).reserved is True  # before any KV: blocks are held
    first_event = asyncio.ensure_future(anext(stream))
    for _ in range(100):  # the reservation is made on the engine thread: wait for it
        if d.engine.kv_failed("r4", "prefill failed"):
            break
        await asyncio.sleep(0.02)
    assert (await first_event).cached_tokens == 64
    rest = [e async for e in stream]
    assert rest[-1].finished and d.heartbeat().fallbacks == 1
    for w in (p, d):
        assert (await w.check()).idle_clean
    # A drained model version drops its prefix cache; the evictions reach the kv index.
    p.engine.drain_cache_events()  # what earlier heartbeats carried
    cached = (await p.check()).blocks.cached
    assert cached >= 4 and await p.engine.free_cache() == cached
    after = await p.check()
    assert after.idle_clean and after.blocks.cached == 0
    assert [e.stored for e in p.engine.drain_cache_events()] == [False] * cached


def test_the_prefill_heartbeat_reports_its_link_egress(engines: tuple[Engine, Engine]) -> None:
    run(engines, link_egress)


async def link_egress(p: Worker, d: Worker) -> None:
    assert p.heartbeat().links == []  # nothing sent yet: no link
    results = [(await handoff(p, d, f"l{i}"))[0] for i in range(2)]
    (link,) = p.heartbeat().links
    assert link.link == "local" and link.cap_gbps is None
    assert link.bytes_sent == sum(r.wire_bytes for r in results) > 0
    assert link.transfers_open == 0 and link.backlog_bytes == 0
    assert link.rate_gbps > 0  # the bytes went out within the last window
    assert d.heartbeat().links == []  # the receiver measures nothing: the sender owns it


def test_kv_computed_for_another_prompt_is_refused_and_the_decode_falls_back(
    engines: tuple[Engine, Engine],
) -> None:
    run(engines, another_prompt_is_refused)


async def another_prompt_is_refused(p: Worker, d: Worker) -> None:
    other = [*PROMPT[:-1], PROMPT[-1] + 1]  # the same but for its last token
    _, expected = commands(d, "ref", PROMPT)
    reference = await events(d, expected.model_copy(update={"expect_kv": False}))
    # p0 ships KV for `other` under the request id d0 reserved for PROMPT.
    send, _ = commands(d, "x", other)
    _, decode = commands(d, "x", PROMPT)
    decoded = asyncio.ensure_future(events(d, decode))
    result = await p.engine.prefill(send)
    got = await decoded
    assert result.ok  # the transfer itself went through; landing refused it
    assert d.heartbeat().fallbacks == 1
    assert [e.token_ids for e in got] == [e.token_ids for e in reference]
    # d0 prefilled PROMPT itself: its own hit is the blocks the reference run left.
    assert got[0].cached_tokens == 64
    for w in (p, d):
        assert (await w.check()).idle_clean


def test_a_decode_that_cannot_reserve_says_so_first_and_counts_a_fallback(
    tiny_llama: Path, cache_dir: Path
) -> None:
    # 8 blocks of 16: one reservation for the 70-token prompt (5 blocks) leaves too few.
    config = EngineConfig(model=str(tiny_llama), cache_dir=cache_dir, num_kv_blocks=8)
    run((Engine(config), Engine(config)), cannot_reserve)


async def cannot_reserve(p: Worker, d: Worker) -> None:
    _, reference = commands(d, "ref", PROMPT)
    expected = await events(d, reference.model_copy(update={"expect_kv": False}))
    _, holder = commands(d, "holder", PROMPT)
    held = aiter(d.engine.decode(holder))
    assert (await anext(held)).reserved is True
    _, second = commands(d, "second", PROMPT)
    stream = aiter(d.engine.decode(second))
    # Told at once, before any KV could be awaited: prefilled here, the gateway ships none.
    first = await asyncio.wait_for(anext(stream), 5.0)
    assert first.reserved is False and not first.token_ids
    assert d.engine.kv_failed("holder", "prefill failed")  # frees its blocks for the rest
    got = [e async for e in stream]
    held_rest = [e async for e in held]
    assert [e.token_ids for e in got] == [e.token_ids for e in expected]
    assert [e.token_ids for e in held_rest] == [e.token_ids for e in expected]
    assert d.heartbeat().fallbacks == 2  # the unreserved one and the failed hand-off
    assert (await d.check()).idle_clean
