"""A seeded sampled request gives the same tokens whether its prompt was prefilled here or
on another engine (its KV imported): a seeded draw depends on (seed, output position) only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prfaas.engine.llm import LLM
from prfaas.engine.sampling_params import SamplingParams

PROMPT = [(5 * i + 11) % 250 + 3 for i in range(37)]


def test_seeded_sampling_is_the_same_on_the_local_and_the_remote_path(
    tiny_llama: Path, cache_dir: Path
) -> None:
    params = SamplingParams(
        max_tokens=12,
        temperature=1.0,
        top_p=0.95,
        seed=1234,
        ignore_eos=True,
        presence_penalty=0.5,
        repetition_penalty=1.2,
    )
    local = LLM(str(tiny_llama), cache_dir=cache_dir, num_kv_blocks=64)
    reference = local.generate(PROMPT, params)[0].outputs[0].token_ids
    prefill = LLM(str(tiny_llama), cache_dir=cache_dir, num_kv_blocks=64)
    decode = LLM(str(tiny_llama), cache_dir=cache_dir, num_kv_blocks=64)
    payload = prefill.prefill(PROMPT, params)
    remote = decode.decode([payload], params)[0].outputs[0].token_ids
    assert payload.first_token_id == reference[0]
    assert remote == reference
    other_seed = dataclasses.replace(params, seed=99)
    assert local.generate(PROMPT, other_seed)[0].outputs[0].token_ids != reference
