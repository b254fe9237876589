"""The official openai client against the gateway (uvicorn, LocalBackend, tiny checkpoint)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from prfaas import LLM, SamplingParams
from tests.gateway.conftest import API_KEY, TINY_CHAT_TEMPLATE, LocalServer

MESSAGES = [{"role": "user", "content": "w5 w9 w17 w33 w65 w129 w200 w7"}]
PROMPT = "w11 w22 w33 w44 w55 w66 w77 w88 w99"
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def llm(tiny_llama: Path, cache_dir: Path) -> LLM:
    llm = LLM(str(tiny_llama), cache_dir=cache_dir, num_kv_blocks=256)
    llm.tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return llm


@pytest.fixture
def client(local_server: LocalServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{local_server.base_url}/v1", api_key=API_KEY, max_retries=0
    ) as client:
        yield client
    local_server.check_engine()


GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_matches_llm(client: openai.OpenAI, llm: LLM) -> None:
    want = llm.chat(MESSAGES, GREEDY)[0]
    raw = client.chat.completions.with_raw_response.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        temperature=0.0,  # type: ignore[arg-type]
    )
    assert raw.headers["x-prfaas-route"] == "local"
    out = raw.parse()
    assert out.choices[0].message.content == want.outputs[0].text
    assert out.choices[0].finish_reason == want.outputs[0].finish_reason
    assert out.usage is not None
    assert out.usage.prompt_tokens == len(want.prompt_token_ids)
    assert out.usage.completion_tokens == len(want.outputs[0].token_ids)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_chat_stream_matches_llm(client: openai.OpenAI, llm: LLM) -> None:
    want = llm.chat(MESSAGES, GREEDY)[0]
    stream = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_completion_tokens=MAX_TOKENS,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    with stream:
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
    assert text == want.outputs[0].text
    assert finish == want.outputs[0].finish_reason
    assert usage is not None and usage.completion_tokens == len(want.outputs[0].token_ids)


def test_completion_matches_llm_and_reports_cached_tokens(client: openai.OpenAI, llm: LLM) -> None:
    want = llm.generate(PROMPT, GREEDY)[0]
    first = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0
    )
    assert first.choices[0].text == want.outputs[0].text
    long_prompt = " ".join(f"w{3 + i % 200}" for i in range(40))
    client.completions.create(model="tiny", prompt=long_prompt, max_tokens=2, temperature=0)
    again = client.completions.create(model="tiny", prompt=long_prompt, max_tokens=2, temperature=0)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens == 32  # two full 16-token blocks


def test_completion_stream_with_token_ids_and_stop(client: openai.OpenAI, llm: LLM) -> None:
    ids = [int(t) for t in llm.tokenizer.encode(PROMPT)]
    want = llm.generate([ids], GREEDY)[0].outputs[0]
    stream = client.completions.create(
        model="tiny", prompt=ids, max_tokens=MAX_TOKENS, temperature=0.0, stream=True
    )
    with stream:
        text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text == want.text
    stop_word = want.text.split()[2]
    cut = client.completions.create(
        model="tiny", prompt=ids, max_tokens=MAX_TOKENS, temperature=0.0, stop=[stop_word]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == want.text[: want.text.index(stop_word)]


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    texts = {
        client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=8, temperature=1.0, top_p=0.9, seed=7
        )
        .choices[0]
        .text
        for _ in range(2)
    }
    assert len(texts) == 1


def test_missing_or_wrong_key_is_401(local_server: LocalServer) -> None:
    for key in (None, "sk-wrong"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = httpx.post(
            f"{local_server.base_url}/v1/completions",
            json={"model": "tiny", "prompt": PROMPT},
            headers=headers,
        )
        assert r.status_code == 401
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert r.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=f"{local_server.base_url}/v1", api_key="sk-wrong")
    with bad, pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(f"{local_server.base_url}/health").status_code == 200


def test_client_disconnect_aborts_the_request(local_server: LocalServer) -> None:
    before = generated_tokens(local_server)
    body = {"prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST", f"{local_server.base_url}/v1/completions", json=body, headers=headers
        ) as r,
    ):
        lines = r.iter_lines()
        assert sum(1 for _, line in zip(range(4), lines, strict=False) if line) >= 2
    # The gateway notices at its next write at the latest, then aborts on the engine thread.
    for _ in range(100):
        try:
            local_server.check_engine()
            break
        except AssertionError:
            time.sleep(0.05)
    local_server.check_engine()
    assert generated_tokens(local_server) - before < 400  # aborted, not run to the end


def generated_tokens(server: LocalServer) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("prfaas_generation_tokens_total "))
    return float(line.split()[1])


def test_client_gone_before_a_whole_answer_aborts_it(local_server: LocalServer) -> None:
    before = generated_tokens(local_server)
    body = {"prompt": PROMPT, "max_tokens": 450, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{local_server.base_url}/v1/completions", json=body, headers=headers, timeout=0.3
        )
    for _ in range(100):
        try:
            local_server.check_engine()
            break
        except AssertionError:
            time.sleep(0.05)
    local_server.check_engine()
    assert generated_tokens(local_server) - before < 450
    text = httpx.get(f"{local_server.base_url}/metrics").text
    assert 'prfaas_requests_total{route="local",status="499"}' in text
