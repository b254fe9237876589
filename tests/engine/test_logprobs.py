"""Logprobs of generated and prompt tokens against transformers' log-softmax (fp32, 1e-4).

They are the raw model's (log-softmax of the logits before bias, penalties and temperature),
so sampling settings must not move them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prfaas.engine.llm import LLM
from prfaas.engine.logprobs import Logprob
from prfaas.engine.sampling_params import SamplingParams

PROMPT = [(7 * i + 3) % 250 + 3 for i in range(40)]
TOL = 1e-4


def _hf_logprobs(folder: Path, token_ids: list[int]) -> torch.Tensor:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)  # row p predicts token p + 1


@pytest.mark.parametrize("budget", [2048, 16], ids=["whole-prefill", "chunked-prefill"])
def test_logprobs_equal_transformers(tiny_llama: Path, cache_dir: Path, budget: int) -> None:
    llm = LLM(str(tiny_llama), cache_dir=cache_dir, num_kv_blocks=64, max_num_batched_tokens=budget)
    params = SamplingParams(
        max_tokens=10,
        temperature=0.7,
        seed=3,
        ignore_eos=True,
        frequency_penalty=1.0,
        logit_bias={5: 3.0},
        logprobs=5,
        prompt_logprobs=3,
    )
    result = llm.generate(PROMPT, params)[0]
    out = result.outputs[0]
    ref = _hf_logprobs(tiny_llama, PROMPT + out.token_ids)
    assert out.logprobs is not None and len(out.logprobs) == len(out.token_ids)
    for i, (token, entry) in enumerate(zip(out.token_ids, out.logprobs, strict=True)):
        row = ref[len(PROMPT) - 1 + i]
        _check_entry(entry, token, row, 5)
    assert result.prompt_logprobs is not None and result.prompt_logprobs[0] is None
    assert len(result.prompt_logprobs) == len(PROMPT)
    for j in range(1, len(PROMPT)):
        prompt_entry = result.prompt_logprobs[j]
        assert prompt_entry is not None
        _check_entry(prompt_entry, PROMPT[j], ref[j - 1], 3)
    llm.engine.check_integrity()
    assert llm.engine.kv.usage == 0.0


def _check_entry(entry: dict[int, Logprob], token: int, row: torch.Tensor, k: int) -> None:
    assert token in entry
    assert abs(entry[token].logprob - row[token].item()) < TOL
    assert entry[token].rank == int((row > row[token]).sum().item()) + 1
    top_vals, top_ids = row.topk(k)
    ranked = sorted((lp.rank, t) for t, lp in entry.items() if lp.rank is not None and lp.rank <= k)
    assert [t for _, t in ranked] == top_ids.tolist()
    for t, v in zip(top_ids.tolist(), top_vals.tolist(), strict=True):
        assert abs(entry[t].logprob - v) < TOL


def test_greedy_logprobs_without_alternatives(tiny_llama: Path, cache_dir: Path) -> None:
    llm = LLM(str(tiny_llama), cache_dir=cache_dir, num_kv_blocks=64)
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, logprobs=0)
    out = llm.generate(PROMPT, params)[0].outputs[0]
    assert out.logprobs is not None
    for token, entry in zip(out.token_ids, out.logprobs, strict=True):
        assert list(entry) == [token] and entry[token].rank == 1  # greedy: the top token
    plain = llm.generate(PROMPT, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    assert plain[0].outputs[0].logprobs is None and plain[0].prompt_logprobs is None
