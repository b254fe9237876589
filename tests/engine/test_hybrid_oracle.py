"""The engine's paged Kimi Linear against transformers, on tiny random checkpoints.

Logits of the prompt's last position and of 32 greedy decode steps within 1e-4 (float32) of
`KimiLinearForCausalLM`; the same tokens when prompts are batched or prefilled in chunks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prfaas.engine.engine import Engine
from tests.engine.helpers import run_recording_logits
from tests.engine.hybrid_helpers import (
    CONFIG_STYLES,
    PATTERNS,
    greedy,
    kimi_engine,
    prompt_of,
    run,
    save_kimi_checkpoint,
)

ATOL = 1e-4


# Tiny tensors: intra-op threads only add synchronisation (and stall on shared cores).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=sorted(PATTERNS))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_kimi_checkpoint(tmp_path_factory.mktemp(request.param), *PATTERNS[request.param])


@pytest.fixture(scope="module")
def engine(checkpoint: Path, cache_dir: Path) -> Engine:
    return kimi_engine(checkpoint, cache_dir)


def _hf_logits(folder: Path, token_ids: list[int], num_prompt: int) -> torch.Tensor:
    from transformers import KimiLinearForCausalLM

    model = KimiLinearForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0]
    return logits[num_prompt - 1 : len(token_ids) - 1]


def test_prefill_and_32_decode_steps_match_transformers(engine: Engine, checkpoint: Path) -> None:
    prompt = prompt_of(21)
    tokens, rows = run_recording_logits(engine, prompt, greedy(32))
    expected = _hf_logits(checkpoint, prompt + tokens, len(prompt))
    assert len(rows) == 32
    torch.testing.assert_close(torch.stack(rows), expected, atol=ATOL, rtol=0)
    assert tokens == expected.argmax(-1).tolist()
    assert engine.kv.usage == 0.0


@pytest.mark.parametrize("style", CONFIG_STYLES)
def test_every_config_style_loads_and_matches_transformers(
    style: str, tmp_path: Path, cache_dir: Path
) -> None:
    # The same architecture described three ways in config.json (see CONFIG_STYLES); the
    # native one (no linear_attn_config block) was once read as Gated DeltaNet and refused.
    layer_types, first_dense = PATTERNS["3to1_moe"]
    folder = save_kimi_checkpoint(tmp_path / style, layer_types, first_dense, style)
    engine = kimi_engine(folder, cache_dir)
    assert [type(s).__name__ for s in engine.layer_specs] == [
        "LinearStateSpec" if t == "linear_attention" else "MLASpec" for t in layer_types
    ]
    prompt = prompt_of(13)
    tokens, rows = run_recording_logits(engine, prompt, greedy(6))
    expected = _hf_logits(folder, prompt + tokens, len(prompt))
    torch.testing.assert_close(torch.stack(rows), expected, atol=ATOL, rtol=0)


def test_batched_requests_decode_as_if_alone(engine: Engine) -> None:
    prompts = [prompt_of(n, seed=n) for n in (5, 16, 37)]
    alone = [run(engine, [p], 12)[0] for p in prompts]
    assert run(engine, prompts, 12) == alone  # one batched recurrence step over three states
    engine.check_integrity()


def test_chunked_prefill_equals_unchunked(
    engine: Engine, checkpoint: Path, cache_dir: Path
) -> None:
    prompt = prompt_of(70, seed=7)
    whole, whole_rows = run_recording_logits(engine, prompt, greedy(8))
    # 16-token budget: the prompt is prefilled in five chunks, each continuing the states.
    chunked_engine = kimi_engine(
        checkpoint, cache_dir, max_num_batched_tokens=16, enable_prefix_caching=False
    )
    chunked, chunked_rows = run_recording_logits(chunked_engine, prompt, greedy(8))
    assert chunked == whole
    torch.testing.assert_close(
        torch.stack(chunked_rows), torch.stack(whole_rows), atol=ATOL, rtol=ATOL
    )


def test_bfloat16_engine_follows_the_sequence_model(checkpoint: Path, cache_dir: Path) -> None:
    from prfaas.model.kimi_model import KimiSequenceModel

    prompts = [prompt_of(21), prompt_of(40, seed=9)]
    batched = run(kimi_engine(checkpoint, cache_dir, dtype="bfloat16"), prompts, 10)
    reference = KimiSequenceModel.from_folder(checkpoint, torch.bfloat16)
    for prompt, tokens in zip(prompts, batched, strict=True):
        expected: list[int] = []
        with torch.no_grad():
            logits, state = reference(torch.tensor(prompt), None)
            for _ in range(10):
                expected.append(int(logits[-1].argmax()))
                logits, state = reference(torch.tensor(expected[-1:]), state)
        assert tokens == expected
