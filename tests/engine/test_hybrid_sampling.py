"""Sampling extras on a hybrid (Kimi Linear) engine: logprobs of generated tokens are the
log-softmax of its logits; prompt logprobs, which its runner cannot give, are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from prfaas.engine.sampling_params import SamplingParams
from tests.engine.hybrid_helpers import PATTERNS, kimi_engine, prompt_of, save_kimi_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_logprobs_and_penalties_on_a_hybrid_engine(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> None:
    folder = save_kimi_checkpoint(tmp_path_factory.mktemp("kimi"), *PATTERNS["3to1_moe"])
    engine = kimi_engine(folder, cache_dir)
    with pytest.raises(ValueError, match="prompt_logprobs are not supported"):
        engine.add_request(prompt_of(9), SamplingParams(prompt_logprobs=1))
    rows: list[torch.Tensor] = []
    execute = engine.runner.execute

    def spy(*args: Any) -> torch.Tensor:
        logits = execute(*args)
        rows.extend(logits[i].clone() for i in range(logits.shape[0]))
        return logits

    engine.runner.execute = spy  # type: ignore[method-assign,assignment]
    params = SamplingParams(
        max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=2, frequency_penalty=1.5
    )
    req = engine.add_request(prompt_of(21), params)
    entries = []
    while engine.has_unfinished():
        for delta in engine.step():
            entries.extend(delta.logprobs or [])
        engine.check_integrity()
    assert len(entries) == len(req.output_token_ids) == len(rows) == 6
    for token, entry, raw in zip(req.output_token_ids, entries, rows, strict=True):
        logp = torch.log_softmax(raw, dim=-1)
        assert entry.token_id == token
        assert abs(entry.logprob - logp[token].item()) < 1e-5
        assert list(entry.top_token_ids) == logp.topk(2).indices.tolist()
