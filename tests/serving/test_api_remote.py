"""The official openai client against `prfaas serve` on the remote path (a prompt above t:
prefilled on the PrfaaS cluster, its KV shipped over the TLS link, decoded locally) with the
API's sampling extras, logprobs, echo and n > 1: what one engine (``prfaas.LLM``) gives."""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from tests.serving.conftest import Deployed

from prfaas import LLM, SamplingParams

LONG = " ".join(f"w{(11 * i) % 200 + 3}" for i in range(70))  # 70 tokens: above t, remote
TOL = 1e-4


@pytest.fixture(scope="module")
def reference(deployed: Deployed) -> LLM:
    return LLM(str(deployed.model), num_kv_blocks=128)


def client(deployed: Deployed) -> openai.OpenAI:
    return openai.OpenAI(base_url=deployed.base_url + "/v1", api_key="key-alice", max_retries=0)


def cached_tokens(deployed: Deployed) -> float:
    text = httpx.get(deployed.base_url + "/metrics").text
    match = re.search(r"^prfaas_cached_prompt_tokens_total ([0-9.e+]+)$", text, re.M)
    assert match is not None
    return float(match.group(1))


def test_extras_logprobs_and_n_on_the_remote_path(deployed: Deployed, reference: LLM) -> None:
    params = SamplingParams(
        n=2,
        max_tokens=6,
        temperature=0.8,
        seed=5,
        presence_penalty=0.5,
        repetition_penalty=1.2,
        logit_bias={40: 4.0},
        logprobs=2,
    )
    (want,) = reference.generate([LONG], params)
    before = cached_tokens(deployed)
    raw = client(deployed).completions.with_raw_response.create(
        model="tiny",
        prompt=LONG,
        n=2,
        max_tokens=6,
        temperature=0.8,
        seed=5,
        presence_penalty=0.5,
        logit_bias={"40": 4.0},
        logprobs=2,
        extra_body={"repetition_penalty": 1.2},
    )
    assert raw.headers["x-prfaas-route"].split()[0] == "prfaas"
    out = raw.parse()
    assert [c.text for c in out.choices] == [o.text for o in want.outputs]
    for choice, expected in zip(out.choices, want.outputs, strict=True):
        lp = choice.logprobs
        assert lp is not None and lp.token_logprobs is not None and expected.logprobs is not None
        for got, token, position in zip(
            lp.token_logprobs, expected.token_ids, expected.logprobs, strict=True
        ):
            assert got is not None and abs(got - position[token].logprob) < TOL
    assert out.usage is not None and out.usage.completion_tokens == sum(
        len(o.token_ids) for o in want.outputs
    )
    # The sibling, submitted once the first sequence had its first token, found the prompt's
    # full blocks cached (the first's KV landed on the decode instance and was kept).
    assert cached_tokens(deployed) - before >= (len(want.prompt_token_ids) - 1) // 16 * 16 > 0


def test_echo_prompt_logprobs_on_the_remote_path(deployed: Deployed, reference: LLM) -> None:
    (want,) = reference.generate([LONG], SamplingParams(max_tokens=1, prompt_logprobs=1))
    raw = client(deployed).completions.with_raw_response.create(
        model="tiny", prompt=LONG, max_tokens=0, echo=True, logprobs=1
    )
    assert raw.headers["x-prfaas-route"].split()[0] == "prfaas"
    choice = raw.parse().choices[0]
    assert choice.text == LONG
    lp = choice.logprobs
    assert lp is not None and lp.token_logprobs is not None and want.prompt_logprobs is not None
    assert lp.token_logprobs[0] is None
    for got, token, position in zip(
        lp.token_logprobs[1:], want.prompt_token_ids[1:], want.prompt_logprobs[1:], strict=True
    ):
        assert got is not None and position is not None
        assert abs(got - position[token].logprob) < TOL
