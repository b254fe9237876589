"""The remote path (prefill role → KV over loopback TCP → decode role) with what the API
asks of it: the first token, sampled on the prefill side, obeys the request's sampling
extras, and its logprobs (and the prompt's) travel with the KV, so the decode side's token
events equal ``prfaas.LLM``'s outputs on one engine."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import prfaas
from prfaas.config import EngineConfig
from prfaas.engine.engine import Engine
from prfaas.messages import DecodeCommand, SamplingSpec, TokenEvent
from prfaas.sampling import to_sampling_params
from tests.conftest import make_tiny_checkpoint
from tests.engine.hybrid_helpers import prompt_of
from tests.engine.test_structured_outputs import SCHEMA, VOCAB, _byte_level_tokenizer, _validate
from tests.serving.test_layerwise import Deployment, engine_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = 1e-4


@pytest.fixture(scope="module")
def engines(tiny_llama: Path, cache_dir: Path) -> tuple[Engine, Engine]:
    config = EngineConfig(**engine_args(tiny_llama, cache_dir))
    return Engine(config), Engine(config)


@pytest.fixture(scope="module")
def llm(tiny_llama: Path, cache_dir: Path) -> prfaas.LLM:
    return prfaas.LLM(**engine_args(tiny_llama, cache_dir))


def remote(
    engines: tuple[Engine, Engine], prompt: list[int], spec: SamplingSpec
) -> list[TokenEvent]:
    async def main() -> list[TokenEvent]:
        d = Deployment(*engines)
        d.start()
        try:
            cmd = d.prefill_command(prompt).model_copy(update={"params": spec})
            decode = DecodeCommand(
                request_id=cmd.request_id,
                prompt_token_ids=prompt,
                params=spec,
                tenant_salt_hex="",
                expect_kv=True,
                deadline_s=30.0,
            )

            async def events() -> list[TokenEvent]:
                return [e async for e in d.decode.run(decode)]

            got = asyncio.ensure_future(events())
            result = await d.prefill.run(cmd)
            assert result.ok, result.error
            out = await got
            assert d.decode_engine.stats().fallbacks == 0  # the KV landed: nothing recomputed
            await d.check_clean()
            return out
        finally:
            await d.stop()

    return asyncio.run(main())


def close(got: Any, want: Any) -> bool:
    return bool(abs(got - want) < TOL)


def test_logprobs_of_the_first_token_and_the_prompt_cross_with_the_kv(
    engines: tuple[Engine, Engine], llm: prfaas.LLM
) -> None:
    prompt = prompt_of(40, seed=3)
    spec = SamplingSpec(max_tokens=5, temperature=0.0, logprobs=2, prompt_logprobs=1)
    events = remote(engines, prompt, spec)
    (want,) = llm.generate([prompt], to_sampling_params(spec))
    tokens = [t for e in events for t in e.token_ids]
    entries = [x for e in events for x in e.logprobs or []]
    assert tokens == want.outputs[0].token_ids
    expected = want.outputs[0].logprobs
    assert expected is not None and len(entries) == len(tokens) == 5
    for entry, position in zip(entries, expected, strict=True):
        assert close(entry.logprob, position[entry.token_id].logprob)
        assert len(entry.top_token_ids) == 2
        for t, lp in zip(entry.top_token_ids, entry.top_logprobs, strict=True):
            assert close(lp, position[t].logprob)
    first = next(e for e in events if e.reserved is None)  # after the reservation's line
    prompt_entries = first.prompt_logprobs
    assert prompt_entries is not None and want.prompt_logprobs is not None
    assert prompt_entries[0] is None and len(prompt_entries) == len(prompt)
    for got, position, token in zip(
        prompt_entries[1:], want.prompt_logprobs[1:], prompt[1:], strict=True
    ):
        assert got is not None and position is not None
        assert got.token_id == token and close(got.logprob, position[token].logprob)


def test_the_first_token_obeys_the_sampling_extras(
    engines: tuple[Engine, Engine], llm: prfaas.LLM
) -> None:
    """The prefill side samples the first token under the request's bias and penalties
    (seeded), the decode side the rest: the tokens of one engine."""
    prompt = prompt_of(30, seed=4)
    spec = SamplingSpec(
        max_tokens=8,
        temperature=0.8,
        seed=9,
        presence_penalty=0.5,
        frequency_penalty=0.3,
        repetition_penalty=1.2,
        min_p=0.05,
        logit_bias={17: 6.0, 18: 6.0},
    )
    tokens = [t for e in remote(engines, prompt, spec) for t in e.token_ids]
    (want,) = llm.generate([prompt], to_sampling_params(spec))
    assert tokens == want.outputs[0].token_ids
    biased = spec.model_copy(update={"logit_bias": {17: 100.0}})
    assert [t for e in remote(engines, prompt, biased) for t in e.token_ids] == [17] * 8


@pytest.fixture(scope="module")
def byte_engines(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> tuple[Engine, Engine]:
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("bytes"), "llama", vocab_size=VOCAB)
    _byte_level_tokenizer(folder)
    config = EngineConfig(**engine_args(folder, cache_dir))
    return Engine(config), Engine(config)


def test_a_grammar_holds_across_the_hand_off(byte_engines: tuple[Engine, Engine]) -> None:
    """The prefill side samples the first token under the grammar; the decode side starts
    its own grammar, advances it by that token and continues: the output validates."""
    prompt = [int(t) for t in byte_engines[0].tokenizer.encode("Describe a user as JSON: " * 3)]
    texts = []
    for seed in range(6):
        spec = SamplingSpec(
            max_tokens=120, temperature=1.0, seed=seed, json_schema=json.dumps(SCHEMA)
        )
        events = remote(byte_engines, prompt, spec)
        assert events[-1].finish_reason == "stop"
        text = "".join(e.text for e in events)
        _validate(json.loads(text))
        texts.append(text)
    assert len(set(texts)) > 1
