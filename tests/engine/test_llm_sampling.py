"""Sampling extras end to end through ``prfaas.LLM`` on a tiny random-weight Llama (fp32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from prfaas.engine.llm import LLM
from prfaas.engine.sampling_params import SamplingParams
from tests.engine.sampling_reference import Row, reference_processed

PROMPT = [(7 * i + 3) % 250 + 3 for i in range(40)]  # 2 full blocks of 16 and a part
EOS = 2


@pytest.fixture(scope="module")
def llm(tiny_llama: Path, cache_dir: Path) -> LLM:
    return LLM(str(tiny_llama), cache_dir=cache_dir, num_kv_blocks=128)


def _generate_recording(llm: LLM, params: SamplingParams) -> tuple[list[int], list[torch.Tensor]]:
    rows: list[torch.Tensor] = []
    execute = llm.engine.runner.execute

    def spy(*args: Any) -> torch.Tensor:
        logits = execute(*args)
        rows.extend(logits[i].clone() for i in range(logits.shape[0]))
        return logits

    llm.engine.runner.execute = spy  # type: ignore[method-assign,assignment]
    try:
        out = llm.generate(PROMPT, params)[0].outputs[0]
    finally:
        llm.engine.runner.execute = execute  # type: ignore[method-assign]
    llm.engine.check_integrity()
    return out.token_ids, rows


def test_penalties_change_greedy_output_as_the_reference_says(llm: LLM) -> None:
    plain, _ = _generate_recording(
        llm, SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    )
    params = SamplingParams(
        max_tokens=24,
        temperature=0.0,
        ignore_eos=True,
        presence_penalty=0.8,
        frequency_penalty=0.6,
        repetition_penalty=1.4,
        logit_bias={plain[0]: -1.0},
    )
    tokens, rows = _generate_recording(llm, params)
    assert tokens != plain
    assert len(rows) == len(tokens)
    eos = llm.engine.eos_token_ids
    for i, raw in enumerate(rows):
        ref = reference_processed(raw, Row(params, PROMPT, tokens[:i]), eos)
        assert tokens[i] == max(range(len(ref)), key=ref.__getitem__)


def test_min_tokens_suppresses_eos(llm: LLM) -> None:
    eager = SamplingParams(max_tokens=12, temperature=0.0, logit_bias={EOS: 100.0})
    out = llm.generate(PROMPT, eager)[0].outputs[0]
    assert out.token_ids == [EOS] and out.finish_reason == "stop"
    held = SamplingParams(max_tokens=12, temperature=0.0, logit_bias={EOS: 100.0}, min_tokens=5)
    out = llm.generate(PROMPT, held)[0].outputs[0]
    assert len(out.token_ids) == 6 and EOS not in out.token_ids[:5]
    assert out.token_ids[5] == EOS and out.finish_reason == "stop"


def test_out_of_vocabulary_bias_is_refused(llm: LLM) -> None:
    with pytest.raises(ValueError, match="logit_bias token ids must be in"):
        llm.generate(PROMPT, SamplingParams(logit_bias={256: 1.0}))
    llm.engine.check_integrity()
    assert not llm.engine.has_unfinished()


def test_min_tokens_defers_stop_strings(llm: LLM) -> None:
    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    text = llm.generate(PROMPT, greedy)[0].outputs[0].text
    first_char = text[0]
    stopped = llm.generate(
        PROMPT, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, stop=[first_char])
    )
    assert stopped[0].outputs[0].text == "" and stopped[0].outputs[0].finish_reason == "stop"
    held = SamplingParams(
        max_tokens=8, temperature=0.0, ignore_eos=True, stop=[first_char], min_tokens=4
    )
    out = llm.generate(PROMPT, held)[0].outputs[0]
    # Every token here starts with a space: the first check that may stop is after token 4,
    # and the text ends before that token's space.
    assert len(out.token_ids) == 4 and out.finish_reason == "stop"
    three = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    assert out.text == llm.generate(PROMPT, three)[0].outputs[0].text
