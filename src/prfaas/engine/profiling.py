"""Short measured runs on a live engine, for start-up profiling (``POST /profile``).

Prefill: one prompt per length and repeat, of random token ids under a random tenant salt,
so no block hash can match anything cached (no prefix hit, and nothing later reuses these
blocks); each goes through ``AsyncEngine.prefill_streamed`` (compute, hand each layer's KV
over as host copies, release the blocks), the path a prefill worker serves, without the
network. Decode: ``decode_batch`` requests of two
blocks each decode ``decode_tokens`` tokens together; the time from the batch's first token
to its last, over the steps between, is one batch step.

What it does not know: what else shares the machine. On a loaded host every figure is
slower; the fastest repeat is reported because the others measure the neighbours.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
import uuid

import numpy as np

from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.runner import NamedTensors
from prfaas.engine.sampling_params import SamplingParams
from prfaas.kvcache.spec import LayerSpec, kv_bytes
from prfaas.messages import ProfileRequest, ProfileResult


async def profile_engine(
    engine: AsyncEngine,
    request: ProfileRequest,
    *,
    vocab_size: int,
    layer_specs: list[LayerSpec],
    block_size: int,
) -> ProfileResult:
    """Raises ValueError (before running anything) for a length this engine cannot serve."""
    limit = engine.max_model_len - 1  # a prefill-only request samples one token
    bad = [n for n in request.num_tokens if n > limit]
    if bad:
        raise ValueError(f"profile lengths {bad} exceed this engine's limit of {limit} tokens")
    rng = np.random.default_rng(secrets.randbits(64))
    lengths = sorted(set(request.num_tokens))
    await _prefill_s(engine, rng, min(lengths), vocab_size)  # warm-up: first-call costs
    times = []
    for n in lengths:
        runs = [await _prefill_s(engine, rng, n, vocab_size) for _ in range(request.repeats)]
        times.append(min(runs))
    step_s = 0.0
    if request.decode_batch > 0:
        prompt_len = min(2 * block_size, limit - request.decode_tokens)
        step_s = await _decode_step_s(
            engine, rng, request.decode_batch, max(prompt_len, 1), request.decode_tokens, vocab_size
        )
    return ProfileResult(
        num_tokens=lengths,
        prefill_s=times,
        kv_bytes=[kv_bytes(layer_specs, n) for n in lengths],
        decode_batch=request.decode_batch,
        decode_step_s=step_s,
    )


def _prompt(rng: np.random.Generator, num_tokens: int, vocab_size: int) -> list[int]:
    return [int(t) for t in rng.integers(0, vocab_size, num_tokens)]


async def _prefill_s(
    engine: AsyncEngine, rng: np.random.Generator, num_tokens: int, vocab_size: int
) -> float:
    prompt = _prompt(rng, num_tokens, vocab_size)
    params = SamplingParams(max_tokens=1, temperature=0)
    start = time.perf_counter()
    await engine.prefill_streamed(
        prompt,
        params,
        f"profile-{uuid.uuid4().hex}",
        _HostCopies(),
        tenant_salt=secrets.token_bytes(16),
    )
    return max(time.perf_counter() - start, 1e-9)


class _HostCopies:
    """A ``LayerSink`` that copies each layer to host memory, as a sender does, and drops it."""

    def begin(self) -> None:
        pass

    def layer(self, layer_index: int, tensors: NamedTensors) -> None:
        for _, tensor in tensors:
            tensor.detach().to("cpu", copy=True)


async def _decode_step_s(
    engine: AsyncEngine,
    rng: np.random.Generator,
    batch: int,
    prompt_len: int,
    num_tokens: int,
    vocab_size: int,
) -> float:
    """Seconds per decode step of ``batch`` requests running together: the median gap
    between one request's tokens while every request of the batch is decoding."""
    params = SamplingParams(max_tokens=num_tokens, temperature=0, ignore_eos=True)
    stamps: list[list[float]] = [[] for _ in range(batch)]

    async def one(times: list[float]) -> None:
        salt = secrets.token_bytes(16)
        prompt = _prompt(rng, prompt_len, vocab_size)
        async for _ in engine.generate(
            prompt, params, f"profile-{uuid.uuid4().hex}", tenant_salt=salt
        ):
            times.append(time.perf_counter())

    await asyncio.gather(*(one(times) for times in stamps))
    begin, end = max(t[0] for t in stamps), min(t[-1] for t in stamps)
    gaps = [b - a for t in stamps for a, b in itertools.pairwise(t) if begin <= a < end]
    if gaps:
        return max(float(np.median(gaps)), 1e-9)
    whole = max(t[-1] for t in stamps) - min(t[0] for t in stamps)
    return max(whole / max(num_tokens - 1, 1), 1e-9)
