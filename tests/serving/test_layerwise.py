"""Layer-wise KV hand-off over real TCP: a prefill role streams each layer as its prompt's
last chunk computes it, a decode role lands it and decodes. Greedy tokens equal those of
``prfaas.LLM`` and the KV is as large as ``LLM.prefill``'s whole payload (dense and hybrid
models, prompts of one chunk and of several); the first layer lands before the last layer
is computed; a cut mid-stream is resumed; a failure mid-stream (receiver gone, deadline)
reports ok=False and leaves the engine's pool and the receiver clean."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.engine.hybrid_helpers import KDA, MLA, prompt_of, save_kimi_checkpoint

import prfaas
from prfaas.config import EngineConfig
from prfaas.decode.role import DecodeRole
from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.engine import Engine
from prfaas.messages import DecodeCommand, KvTarget, PrefillCommand, PrefillResult, SamplingSpec
from prfaas.prefill.kv_export import payload_to_wire
from prfaas.prefill.role import LinkSettings, PrefillRole
from prfaas.transfer.config import ReceiverConfig
from prfaas.transfer.emulator import EmulatorConfig, LinkEmulator
from prfaas.transfer.errors import TransferError
from prfaas.transfer.receiver import KvReceiver
from prfaas.transfer.tls import PLAINTEXT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_TOKENS = 6
CHUNK = 32  # tokens per prefill step: prompts above it are prefilled in several chunks


@dataclass
class Landed:
    """A ReceiveListener: when each wire layer landed (monotonic)."""

    at: dict[int, float] = field(default_factory=dict)

    def on_layer(self, request_id: str, layer: int) -> None:
        self.at.setdefault(layer, time.monotonic())

    def on_complete(self, request_id: str) -> None:
        pass

    def on_failed(self, request_id: str, error: TransferError) -> None:
        pass


def engine_args(folder: Path, cache_dir: Path) -> dict[str, Any]:
    return dict(
        model=str(folder),
        cache_dir=cache_dir,
        num_kv_blocks=64,
        block_size=16,
        max_num_batched_tokens=CHUNK,
        dtype="float32",
        device="cpu",
    )


@pytest.fixture(scope="module")
def kimi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_kimi_checkpoint(tmp_path_factory.mktemp("kimi"), [KDA, MLA, KDA], 3)


@pytest.fixture(scope="module")
def engines(tiny_llama: Path, kimi: Path, cache_dir: Path) -> dict[str, tuple[Engine, Engine]]:
    """(prefill engine, decode engine) per model, loaded once for the module."""
    out = {}
    for name, folder in (("llama", tiny_llama), ("kimi", kimi)):
        config = EngineConfig(**engine_args(folder, cache_dir))
        out[name] = (Engine(config), Engine(config))
    return out


@pytest.fixture(scope="module")
def whole_kv_bytes(
    tiny_llama: Path, kimi: Path, cache_dir: Path
) -> Callable[[str, list[int]], int]:
    """The bytes of ``LLM.prefill``'s whole payload (the sync export) on the wire, first
    token included, for a prompt."""
    llms = {
        name: prfaas.LLM(**engine_args(folder, cache_dir))
        for name, folder in (("llama", tiny_llama), ("kimi", kimi))
    }

    def kv_bytes(name: str, prompt: list[int]) -> int:
        payload = llms[name].prefill(prompt, prfaas.SamplingParams(max_tokens=1))
        _, arrays = payload_to_wire(payload, "whole", "raw", bytes(16))
        return sum(a.nbytes for a in arrays)

    return kv_bytes


@pytest.fixture(scope="module")
def reference(tiny_llama: Path, kimi: Path, cache_dir: Path) -> Callable[[str, list[int]], Any]:
    """Greedy tokens of prfaas.LLM (no hand-off at all) for a model and a prompt."""
    llms = {
        name: prfaas.LLM(**engine_args(folder, cache_dir))
        for name, folder in (("llama", tiny_llama), ("kimi", kimi))
    }

    def tokens(name: str, prompt: list[int]) -> list[int]:
        params = prfaas.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
        (out,) = llms[name].generate([prompt], params)
        return list(out.outputs[0].token_ids)

    return tokens


class Deployment:
    """One prefill role and one decode role in this process, talking over loopback TCP."""

    def __init__(self, prefill: Engine, decode: Engine, resume_window_s: float = 10.0) -> None:
        self.prefill_engine, self.decode_engine = AsyncEngine(prefill), AsyncEngine(decode)
        self.landed = Landed()
        self.receiver = KvReceiver(
            ReceiverConfig(
                fingerprint=bytes.fromhex(decode.fingerprint), resume_window_s=resume_window_s
            ),
            tls=PLAINTEXT,
            listener=self.landed,
        ).start()
        self.prefill = PrefillRole(self.prefill_engine, LinkSettings({}), None)
        self.decode = DecodeRole(self.decode_engine, self.receiver, decode.layout)
        self._ids = iter(range(1 << 30))

    def start(self) -> None:
        self.prefill_engine.start()
        self.decode_engine.start()

    async def stop(self) -> None:
        await self.prefill_engine.shutdown()
        await self.decode_engine.shutdown()
        self.receiver.close()

    def prefill_command(
        self,
        prompt: list[int],
        deadline_s: float = 30.0,
        codec: str = "raw",
        via: tuple[str, int] | None = None,
    ) -> PrefillCommand:
        """``via``: send to this address (a link emulator) instead of the receiver's."""
        host, port = via or self.receiver.address
        return PrefillCommand(
            request_id=f"r{next(self._ids)}",
            prompt_token_ids=prompt,
            params=SamplingSpec(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True),
            tenant_salt_hex="",
            target=KvTarget(host=host, port=port, codec=codec),
            deadline_s=deadline_s,
        )

    async def handoff(
        self, prompt: list[int], via: tuple[str, int] | None = None
    ) -> tuple[list[int], PrefillResult]:
        """Prefill there, decode here; the tokens, asserting no fallback happened."""
        cmd = self.prefill_command(prompt, via=via)
        decode = DecodeCommand(
            request_id=cmd.request_id,
            prompt_token_ids=prompt,
            params=cmd.params,
            tenant_salt_hex="",
            expect_kv=True,
            deadline_s=30.0,
        )

        async def tokens() -> list[int]:
            before = self.decode_engine.stats().fallbacks
            out: list[int] = []
            async for event in self.decode.run(decode):
                out += event.token_ids
            assert self.decode_engine.stats().fallbacks == before, "the KV hand-off failed"
            return out

        decoded = asyncio.ensure_future(tokens())
        result = await self.prefill.run(cmd)
        return await decoded, result

    async def check_clean(self) -> None:
        """Pools pass their integrity checks and hold no request; the receiver holds nothing."""
        for engine in (self.prefill_engine, self.decode_engine):
            for _ in range(100):  # an abort is queued to the engine thread: let it run
                held = await engine.call(lambda e: e.scheduler.num_unfinished)
                if not held:
                    break
                await asyncio.sleep(0.02)
            await engine.call(lambda e: e.check_integrity())
            assert held == 0
        for _ in range(100):
            if self.receiver.allocated_bytes == 0:
                break
            await asyncio.sleep(0.05)
        assert self.receiver.allocated_bytes == 0


def run(engines: tuple[Engine, Engine], body: Any, **kw: Any) -> Any:
    async def main() -> Any:
        deployment = Deployment(*engines, **kw)
        deployment.start()
        try:
            return await body(deployment)
        finally:
            await deployment.stop()

    return asyncio.run(main())


@pytest.mark.parametrize("model", ["llama", "kimi"])
def test_layerwise_tokens_and_bytes_equal_the_whole_payload_and_llm(
    engines: dict[str, tuple[Engine, Engine]], reference: Any, whole_kv_bytes: Any, model: str
) -> None:
    prompts = [prompt_of(20, seed=1), prompt_of(3 * CHUNK + 7, seed=2)]  # one chunk, four

    async def body(d: Deployment) -> list[tuple[list[int], PrefillResult]]:
        out = [await d.handoff(p) for p in prompts]
        await d.check_clean()
        return out

    for prompt, (tokens, result) in zip(prompts, run(engines[model], body), strict=True):
        assert result.ok
        assert result.kv_bytes == whole_kv_bytes(model, prompt) > 0
        assert tokens == reference(model, prompt)
        assert len(tokens) == MAX_TOKENS


@contextlib.contextmanager
def slow_last_layer(
    engine: Engine, delay_s: float, before: Callable[[], None] | None = None
) -> Iterator[list[float]]:
    """Make the model's last layer take ``delay_s`` longer (a stand-in for a real model's
    layer time: the tiny model computes a layer in well under a millisecond, too fast to
    see any overlap); yields the instants the last layer finished, one per step."""
    layer = engine.loaded.model.model.layers[-1]
    forward = layer.forward
    done: list[float] = []

    def slow(*args: Any, **kw: Any) -> Any:
        if before is not None:
            before()
        time.sleep(delay_s)
        out = forward(*args, **kw)
        done.append(time.monotonic())
        return out

    layer.forward = slow
    try:
        yield done
    finally:
        del layer.forward  # the class's forward again


def test_first_layer_lands_before_the_last_layer_is_computed(
    engines: dict[str, tuple[Engine, Engine]],
) -> None:
    """Layer 0's bytes are on the receiver while the (slow) last layer still computes."""
    prefill, _ = engines["llama"]

    async def body(d: Deployment) -> tuple[float, list[float], PrefillResult]:
        with slow_last_layer(prefill, 1.5) as done:
            # Two chunks; a prompt of its own (no prefix-cache hit from another test).
            _, result = await d.handoff(prompt_of(CHUNK + 8, seed=11))
        return d.landed.at[0], done, result

    first_landed, done, result = run(engines["llama"], body)
    assert result.ok
    assert len(done) == 2  # one per chunk; done[-1]: the last chunk's last layer
    assert first_landed < done[-1] - 0.5


def test_cut_mid_stream_resumes_and_decodes_the_same_tokens(
    engines: dict[str, tuple[Engine, Engine]], reference: Any, caplog: pytest.LogCaptureFixture
) -> None:
    prefill, _ = engines["llama"]
    prompt = prompt_of(20, seed=7)

    async def body(d: Deployment) -> tuple[list[int], PrefillResult]:
        config = EmulatorConfig(("127.0.0.1", 0), d.receiver.address)
        with LinkEmulator(config) as emulator:

            def cut_once_layer_0_landed() -> None:
                for _ in range(200):
                    if d.landed.at:
                        break
                    time.sleep(0.05)
                emulator.cut()

            with slow_last_layer(prefill, 0.3, before=cut_once_layer_0_landed):
                out = await d.handoff(prompt, via=emulator.address)
        await d.check_clean()
        return out

    with caplog.at_level(logging.WARNING, "prfaas.prefill.layer_stream"):
        tokens, result = run(engines["llama"], body)
    assert result.ok
    assert any("resuming" in r.getMessage() for r in caplog.records)  # the cut did hit it
    assert tokens == reference("llama", prompt)


def test_receiver_gone_mid_stream_reports_failure_and_leaves_pools_clean(
    engines: dict[str, tuple[Engine, Engine]],
) -> None:
    prefill, _ = engines["llama"]

    async def body(d: Deployment) -> PrefillResult:
        def close_once_layer_0_landed() -> None:
            for _ in range(200):
                if d.landed.at:
                    break
                time.sleep(0.05)
            d.receiver.close()

        # One chunk: layer 0 lands, then the receiver closes while the last layer computes;
        # the resume attempt finds nobody listening.
        with slow_last_layer(prefill, 0.3, before=close_once_layer_0_landed):
            result = await d.prefill.run(d.prefill_command(prompt_of(20)))
        await d.check_clean()
        assert d.landed.at  # the stream had started: the failure is mid-stream
        return result

    result = run(engines["llama"], body)
    assert not result.ok and result.error


def test_deadline_mid_prefill_aborts_the_stream_and_frees_everything(
    engines: dict[str, tuple[Engine, Engine]],
) -> None:
    prefill, _ = engines["llama"]

    async def body(d: Deployment) -> PrefillResult:
        with slow_last_layer(prefill, 1.5):
            result = await d.prefill.run(d.prefill_command(prompt_of(20), deadline_s=0.5))
        await d.check_clean()  # the aborted transfer is freed at once (no resume window)
        # The engine still works: a later hand-off succeeds.
        _, after = await d.handoff(prompt_of(20))
        assert after.ok
        await d.check_clean()
        return result

    result = run(engines["llama"], body, resume_window_s=0.0)
    assert not result.ok and result.error and "deadline" in result.error


def test_codec_applies_to_each_streamed_layer(engines: dict[str, tuple[Engine, Engine]]) -> None:
    async def body(d: Deployment) -> PrefillResult:
        result = await d.prefill.run(d.prefill_command(prompt_of(50, seed=5), codec="int8"))
        decoded = await asyncio.to_thread(d.receiver.wait, result.request_id, 10.0)
        d.receiver.release(result.request_id)
        assert decoded.header.codec == "int8"
        return result

    result = run(engines["llama"], body)
    assert result.ok
    assert result.wire_bytes < result.kv_bytes / 2  # int8: about a quarter of float32
