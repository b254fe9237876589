"""Test helpers: run the real engine while recording the logits its runner returns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from prfaas.config import EngineConfig
from prfaas.engine.engine import Engine
from prfaas.engine.handoff import KvPayload
from prfaas.engine.request import RequestStatus
from prfaas.engine.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
# Where the engines of these tests compute: the host, unless benchmarks/engine_gpu.sh runs the
# oracle and hand-off tests with the engine on a GPU (PRFAAS_TEST_DEVICE=cuda).
TEST_DEVICE = os.environ.get("PRFAAS_TEST_DEVICE", "cpu")


def make_engine(model: Path | str | None, cache_dir: Path, **kw: Any) -> Engine:
    kw.setdefault("num_kv_blocks", 256)
    kw.setdefault("device", TEST_DEVICE)
    return Engine(
        EngineConfig(model=None if model is None else str(model), cache_dir=cache_dir, **kw)
    )


def export_prefill(
    engine: Engine, prompt: list[int], params: SamplingParams, request_id: str
) -> KvPayload:
    """Prefill one prompt on a sync engine (not driven by an AsyncEngine) and export its KV,
    as ``LLM.prefill`` does; the blocks are freed."""
    req = engine.add_request(prompt, params, request_id, prefill_only=True)
    while req.status is not RequestStatus.SENDING_KV:
        assert not req.status.is_done, f"request {request_id} ended before its KV was ready"
        engine.step()
    try:
        return engine.export_kv(request_id)
    finally:
        engine.release(request_id)


def run_recording_logits(
    engine: Engine, prompt: list[int], params: SamplingParams = GREEDY
) -> tuple[list[int], list[torch.Tensor]]:
    """Generate greedily for one request; returns its tokens and the logits row of each."""
    rows: list[torch.Tensor] = []
    execute = engine.runner.execute

    def spy(out: Any) -> torch.Tensor:
        logits = execute(out)
        # On the host: transformers, the oracle, runs there (benchmarks/engine_gpu.sh runs
        # these tests with the engine on a GPU).
        rows.extend(logits[i].cpu() for i in range(logits.shape[0]))
        return logits

    engine.runner.execute = spy  # type: ignore[method-assign]
    try:
        req = engine.add_request(prompt, params)
        while engine.has_unfinished():
            engine.step()
            engine.check_integrity()
    finally:
        engine.runner.execute = execute  # type: ignore[method-assign]
    return list(req.output_token_ids), rows


def hf_logits(folder: Path, token_ids: list[int], num_prompt: int) -> torch.Tensor:
    """transformers' logits at each position that predicts an output token."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0]
    return logits[num_prompt - 1 : len(token_ids) - 1]
