"""The embedded default model (SmolLM2-135M-Instruct, GGUF) answers a real question."""

from __future__ import annotations

from pathlib import Path

import pytest

from prfaas import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(cache_dir: Path) -> LLM:
    return LLM(None, cache_dir=cache_dir, num_kv_blocks=512)


def test_capital_of_france(llm: LLM) -> None:
    out = llm.chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(max_tokens=24, temperature=0.0),
    )
    text = out[0].outputs[0].text
    assert "Paris" in text, text
    assert out[0].outputs[0].finish_reason in ("stop", "length")
    llm.engine.check_integrity()


def test_streamed_text_equals_decoded_tokens(llm: LLM) -> None:
    out = llm.generate(
        ["The three primary colours are"],
        SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True),
    )
    completion = out[0].outputs[0]
    assert completion.text == llm.tokenizer.decode(completion.token_ids, skip_special_tokens=True)


def test_stop_string_truncates(llm: LLM) -> None:
    params = SamplingParams(max_tokens=40, temperature=0.0, stop=["Paris"])
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}], params)
    completion = out[0].outputs[0]
    assert completion.finish_reason == "stop" and completion.stop_reason == "Paris"
    assert "Paris" not in completion.text


def test_one_sampling_params_per_prompt(llm: LLM) -> None:
    prompts = ["The three primary colours are", "One, two, three,"]
    short = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    long = SamplingParams(max_tokens=9, temperature=0.0, ignore_eos=True)
    both = llm.generate(prompts, [short, long])
    assert [len(o.outputs[0].token_ids) for o in both] == [3, 9]
    # Each prompt decodes as it would with its params applied to the whole batch.
    alone = llm.generate(prompts, long)
    assert both[1].outputs[0].token_ids == alone[1].outputs[0].token_ids
    assert both[0].outputs[0].token_ids == alone[0].outputs[0].token_ids[:3]
    llm.engine.check_integrity()


def test_params_list_of_the_wrong_length_is_refused_before_any_request(llm: LLM) -> None:
    params = SamplingParams(max_tokens=2)
    with pytest.raises(ValueError, match="2 SamplingParams for 3 prompts"):
        llm.generate(["a", "b", "c"], [params, params])
    with pytest.raises(TypeError, match="not SamplingParams"):
        llm.generate(["a"], [{"max_tokens": 2}])  # type: ignore[list-item]
    assert not llm.engine.has_unfinished()
