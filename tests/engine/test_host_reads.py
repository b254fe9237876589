"""No step reads a tensor back to the host except for the sampled token ids.

On an accelerator every read of a value (``.item()``, ``.tolist()``, ``bool(t)``, ...) waits
for the device; a step that makes one per layer, expert or row stalls on each. On a CPU
these reads cost nothing, so the test counts them (``tests/host_reads.py``) during every step
of tiny dense and hybrid (KDA + MLA + MoE) models: chunked prefills, batched decodes, greedy
and random rows (temperature, top-k, top-p, min-p, seeded) and penalties. The one read
allowed per step is the sampled ids (``tolist``). KDA runs its accelerator path
(``without_read_backs``): on a CPU it picks cheaper exact paths by reading a decay back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prfaas.engine.engine import Engine
from prfaas.engine.sampling_params import SamplingParams
from prfaas.model.kda import without_read_backs
from tests.conftest import make_tiny_checkpoint
from tests.engine.helpers import make_engine
from tests.engine.hybrid_helpers import PATTERNS, kimi_engine, save_kimi_checkpoint
from tests.host_reads import count_host_reads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARAMS = [
    SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True),
    SamplingParams(max_tokens=5, temperature=0.8, top_k=5, top_p=0.9, ignore_eos=True),
    SamplingParams(max_tokens=6, temperature=1.0, min_p=0.1, seed=7, ignore_eos=True),
    SamplingParams(max_tokens=4, temperature=0.0, presence_penalty=0.5, ignore_eos=True),
]


def _steps_reads(engine: Engine, prompt_lens: list[int], vocab: int) -> list[list[str]]:
    for i, (n, params) in enumerate(zip(prompt_lens, PARAMS, strict=True)):
        engine.add_request([(7 * i + 3 * j) % (vocab - 3) + 3 for j in range(n)], params)
    per_step = []
    while engine.has_unfinished():
        with count_host_reads() as reads:
            engine.step()
        per_step.append(list(reads))
        engine.check_integrity()
    return per_step


def _assert_only_sampled_ids(per_step: list[list[str]]) -> None:
    assert len(per_step) > 5
    assert all(reads in ([], ["tolist"]) for reads in per_step), per_step


def test_dense_steps_read_only_the_sampled_ids(tmp_path: Path, cache_dir: Path) -> None:
    folder = make_tiny_checkpoint(tmp_path / "llama", "llama")
    # A 24-token budget: the 40-token prompt is prefilled in chunks beside decodes.
    engine = make_engine(folder, cache_dir, max_num_batched_tokens=24, block_size=8)
    _assert_only_sampled_ids(_steps_reads(engine, [40, 9, 17, 5], engine.vocab_size))


def test_hybrid_moe_steps_read_only_the_sampled_ids(tmp_path: Path, cache_dir: Path) -> None:
    folder = save_kimi_checkpoint(tmp_path / "kimi", *PATTERNS["3to1_moe"])
    engine = kimi_engine(folder, cache_dir, max_num_batched_tokens=24)
    with without_read_backs():
        per_step = _steps_reads(engine, [40, 9, 17, 5], engine.vocab_size)
    _assert_only_sampled_ids(per_step)
