"""The official openai client against the gateway on one real engine (tiny checkpoint,
LocalBackend): logprobs, echo, sampling extras, n > 1 and batched prompts give what the
offline ``prfaas.LLM`` gives for the same request.

The greedy ones run on vLLM instances too (`prfaas serve --engine vllm` on the byte-level
tiny model, the session's deployment): vLLM's logprobs, prompt logprobs and tokens must
equal the reference engine's on the same checkpoint. The seeded ones compare sampled tokens
with ``prfaas.LLM``'s, which vLLM's sampler does not draw: they run on the reference engine
alone."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from prfaas import LLM, SamplingParams
from tests.api.conftest import ENGINES
from tests.gateway.conftest import API_KEY, LocalServer
from tests.gateway.test_openai_api import client, llm
from tests.vllm_deployment import TOOLS_TEMPLATE, Deployed

MESSAGES = [{"role": "user", "content": "w5 w9 w17 w33 w65 w129 w200 w7"}]
PROMPT = "w11 w22 w33 w44 w55 w66 w77 w88 w99"
LONG_PROMPT = " ".join(f"w{3 + (i * 7) % 250}" for i in range(40))  # several full blocks
TOL = 1e-4


__all__ = ["client", "llm"]  # the fixtures, used by name


@dataclass
class Api:
    """An engine's gateway through the official client, and ``prfaas.LLM`` on its model."""

    client: openai.OpenAI
    llm: LLM
    model: str


@pytest.fixture(scope="module")
def bytes_llm(vllm_bytes: Deployed, cache_dir: Path) -> LLM:
    """The reference engine on the vLLM deployment's checkpoint."""
    llm = LLM(str(vllm_bytes.folder), cache_dir=cache_dir, num_kv_blocks=256)
    llm.tokenizer.chat_template = TOOLS_TEMPLATE
    return llm


@pytest.fixture(params=ENGINES)
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    if request.param == "reference":
        yield Api(request.getfixturevalue("client"), request.getfixturevalue("llm"), "tiny")
        return
    base_url = request.getfixturevalue("vllm_bytes").base_url
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0) as c:
        yield Api(c, request.getfixturevalue("bytes_llm"), "bytes")


def decode(llm: LLM, token_id: int) -> str:
    return str(llm.tokenizer.decode([token_id]))


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_equal_the_llms(api: Api, stream: bool) -> None:
    want = api.llm.chat(MESSAGES, SamplingParams(max_tokens=6, temperature=0.0, logprobs=3))[0]
    args = dict(model=api.model, messages=MESSAGES, max_tokens=6, temperature=0.0, logprobs=True)
    if stream:
        content = []
        for chunk in api.client.chat.completions.create(**args, top_logprobs=3, stream=True):  # type: ignore[call-overload]
            for choice in chunk.choices:
                if choice.logprobs is not None:
                    content += choice.logprobs.content or []
    else:
        out = api.client.chat.completions.create(**args, top_logprobs=3)  # type: ignore[call-overload]
        assert out.choices[0].logprobs is not None
        content = out.choices[0].logprobs.content or []
    expected = want.outputs[0].logprobs
    assert expected is not None and len(content) == len(expected) == 6
    for got, (token_id, position) in zip(
        content, zip(want.outputs[0].token_ids, expected, strict=True), strict=True
    ):
        assert got.token == decode(api.llm, token_id)
        assert got.bytes == list(got.token.encode())
        assert abs(got.logprob - position[token_id].logprob) < TOL
        top = sorted(
            (lp for lp in position.values() if lp.rank is not None), key=lambda lp: lp.rank or 0
        )
        assert len(got.top_logprobs) == 3
        for alt, lp in zip(got.top_logprobs, top[:3], strict=True):
            assert alt.token == lp.decoded_token and abs(alt.logprob - lp.logprob) < TOL


def test_completion_logprobs_and_offsets(api: Api) -> None:
    want = api.llm.generate(PROMPT, SamplingParams(max_tokens=5, temperature=0.0, logprobs=2))[0]
    out = api.client.completions.create(
        model=api.model, prompt=PROMPT, max_tokens=5, temperature=0.0, logprobs=2
    )
    lp = out.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert lp.tokens == [decode(api.llm, t) for t in want.outputs[0].token_ids]
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    expected = want.outputs[0].logprobs
    assert expected is not None
    for got, token_id, position in zip(
        lp.token_logprobs, want.outputs[0].token_ids, expected, strict=True
    ):
        assert got is not None and abs(got - position[token_id].logprob) < TOL
    assert lp.top_logprobs is not None and all(
        t is not None and 2 <= len(t) <= 3 for t in lp.top_logprobs
    )


def test_echo_with_no_tokens_gives_the_prompt_logprobs(api: Api) -> None:
    want = api.llm.generate(
        PROMPT, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
    )[0]
    out = api.client.completions.create(
        model=api.model, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1
    )
    choice = out.choices[0]
    assert choice.text == PROMPT
    assert out.usage is not None and out.usage.completion_tokens == 0
    assert out.usage.prompt_tokens == len(want.prompt_token_ids)
    lp = choice.logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.top_logprobs is not None
    assert lp.tokens == [decode(api.llm, t) for t in want.prompt_token_ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    expected = want.prompt_logprobs
    assert expected is not None
    for got, token_id, position in zip(
        lp.token_logprobs[1:], want.prompt_token_ids[1:], expected[1:], strict=True
    ):
        assert position is not None
        assert got is not None and abs(got - position[token_id].logprob) < TOL


def test_sampling_extras_reach_the_engine(client: openai.OpenAI, llm: LLM) -> None:
    """Seeded sampling under every extra gives the LLM's tokens: each one arrived."""
    extras = dict(
        presence_penalty=0.7,
        frequency_penalty=0.4,
        repetition_penalty=1.3,
        min_tokens=4,
        min_p=0.05,
    )
    bias = {11: 3.0, 12: -100.0}
    params = SamplingParams(
        max_tokens=12,
        temperature=0.9,
        seed=3,
        logit_bias=bias,
        **extras,  # type: ignore[arg-type]
    )
    want = llm.generate(PROMPT, params)[0].outputs[0].text
    out = client.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=12,
        temperature=0.9,
        seed=3,
        logit_bias={str(k): v for k, v in bias.items()},
        presence_penalty=0.7,
        frequency_penalty=0.4,
        extra_body={"repetition_penalty": 1.3, "min_tokens": 4, "min_p": 0.05},
    )
    assert out.choices[0].text == want
    plain = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=12, temperature=0.9, seed=3
    )
    assert plain.choices[0].text != want  # the extras changed the outcome


def cached_tokens_counter(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics").text
    match = re.search(r"^prfaas_cached_prompt_tokens_total ([0-9.e+]+)$", text, re.M)
    assert match is not None
    return float(match.group(1))


def test_n_seeded_choices_share_the_prompts_blocks(
    client: openai.OpenAI, llm: LLM, local_server: LocalServer
) -> None:
    params = SamplingParams(n=3, max_tokens=8, temperature=1.0, seed=42)
    want = [o.text for o in llm.generate(LONG_PROMPT, params)[0].outputs]
    before = cached_tokens_counter(local_server.base_url)
    out = client.completions.create(
        model="tiny", prompt=LONG_PROMPT, n=3, max_tokens=8, temperature=1.0, seed=42
    )
    cached = cached_tokens_counter(local_server.base_url) - before
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.text for c in out.choices] == want  # the offline API's siblings, seed for seed
    assert len(set(want)) == 3
    assert out.usage is not None and out.usage.completion_tokens == 24
    block = local_server.async_engine.block_size
    num_prompt = out.usage.prompt_tokens
    # The two siblings took every full block of the prompt from the first one's cache.
    assert cached >= 2 * (num_prompt - 1) // block * block > 0


def test_batched_prompts_with_n_are_indexed_prompt_major(api: Api) -> None:
    prompts = [PROMPT, "w7 w8 w9"]
    params = SamplingParams(n=2, max_tokens=4, temperature=0.0)
    results = api.llm.generate(prompts, params)
    want = [o.text for r in results for o in r.outputs]
    out = api.client.completions.create(
        model=api.model, prompt=prompts, n=2, max_tokens=4, temperature=0
    )
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    # An output cut mid-character (the byte-level model's): the reference engine renders the
    # incomplete tail as U+FFFD, vLLM's detokenizer holds it back; the rest is the same.
    assert [c.text.rstrip("\ufffd") for c in out.choices] == [t.rstrip("\ufffd") for t in want]
    assert out.usage is not None
    assert out.usage.prompt_tokens == sum(len(api.llm.tokenizer.encode(p)) for p in prompts)
    assert out.usage.completion_tokens == sum(len(o.token_ids) for r in results for o in r.outputs)


def test_n_streamed_chunks_name_their_choice(api: Api) -> None:
    texts = ["", ""]
    finished = [False, False]
    stream = api.client.chat.completions.create(
        model=api.model,
        messages=MESSAGES,
        n=2,
        max_tokens=5,
        temperature=1.0,
        seed=1,
        stream=True,  # type: ignore[arg-type]
    )
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finished[choice.index] |= choice.finish_reason is not None
    assert all(finished) and all(texts)
