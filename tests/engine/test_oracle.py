"""Our Llama-family models against transformers on tiny random-weight checkpoints (fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import make_tiny_checkpoint
from tests.engine.helpers import hf_logits, make_engine, run_recording_logits

PROMPT = [(7 * i + 3) % 250 + 3 for i in range(57)]  # 57 tokens: not a block multiple

VARIANTS = {
    "llama": ("llama", {}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama3-rope-scaling": (
        "llama",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
    ),
    "qwen2-bias": ("qwen2", {}),
    "qwen3-qk-norm": ("qwen3", {"tie_word_embeddings": True}),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    kind, overrides = VARIANTS[request.param]
    return make_tiny_checkpoint(tmp_path_factory.mktemp(request.param), kind, **overrides)


@pytest.mark.parametrize("budget", [2048, 16], ids=["whole-prefill", "chunked-prefill"])
def test_logits_and_greedy_tokens_match_transformers(
    checkpoint: Path, cache_dir: Path, budget: int
) -> None:
    engine = make_engine(checkpoint, cache_dir, max_num_batched_tokens=budget)
    tokens, rows = run_recording_logits(engine, PROMPT)
    assert len(tokens) == 32
    ref = hf_logits(checkpoint, PROMPT + tokens, len(PROMPT))
    ours = torch.stack(rows)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4
    # Greedy tokens: transformers' argmax at every step picks the token we generated.
    assert ref.argmax(-1).tolist() == tokens
    engine.check_integrity()
    assert engine.kv.usage == 0.0
