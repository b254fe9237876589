"""Start-up profiling on a vLLM instance (``ProfileRequest``): prefills of fresh random tokens
(a new cache salt each, so no prefix hit), timed end to end through vLLM (``max_tokens=1``,
no hand-off), and optionally one decode batch. The step time of the batch is its wall time
over the tokens it generated per request (a mean over the steps, prefill included)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from prfaas.messages import ProfileRequest, ProfileResult


@dataclass(frozen=True)
class ProfileTarget:
    llm: Any  # vLLM's AsyncLLM
    vocab_size: int
    max_model_len: int
    kv_bytes_per_token: int


async def _run(engine: ProfileTarget, num_tokens: int, max_tokens: int, seed: int) -> float:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    rng = random.Random(seed)
    vocab = engine.vocab_size
    prompt = TokensPrompt(
        prompt_token_ids=[rng.randrange(vocab) for _ in range(num_tokens)],
        cache_salt=uuid.uuid4().hex,
    )
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    started_s = time.monotonic()
    async for _ in engine.llm.generate(prompt, params, f"profile-{uuid.uuid4().hex}"):
        pass
    return time.monotonic() - started_s


async def profile_vllm(engine: ProfileTarget, request: ProfileRequest) -> ProfileResult:
    limit = engine.max_model_len - 1
    too_long = [n for n in request.num_tokens if n > limit]
    if too_long:
        raise ValueError(f"lengths {too_long} exceed this instance's limit of {limit} tokens")
    prefill_s = []
    for i, n in enumerate(request.num_tokens):
        runs = [await _run(engine, n, 1, 1000 * i + r) for r in range(request.repeats)]
        prefill_s.append(min(runs))
    step_s = 0.0
    if request.decode_batch > 0:
        started_s = time.monotonic()
        await asyncio.gather(
            *(_run(engine, 16, request.decode_tokens, -r) for r in range(request.decode_batch))
        )
        step_s = (time.monotonic() - started_s) / request.decode_tokens
    return ProfileResult(
        num_tokens=list(request.num_tokens),
        prefill_s=prefill_s,
        kv_bytes=[n * engine.kv_bytes_per_token for n in request.num_tokens],
        decode_batch=request.decode_batch,
        decode_step_s=step_s,
    )
