"""vLLM's output stream of one request, read with deadlines and turned into the worker
protocol's ``TokenEvent``s (instance.py's decode).

Every read has a deadline: the first output waits for the KV's deadline (or the fallback
signal, whichever comes first), every later one at most ``STALL_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from prfaas.integrations.vllm.sampling import logprob_entries, prompt_logprob_entries
from prfaas.messages import SamplingSpec, TokenEvent

if TYPE_CHECKING:
    from vllm import RequestOutput

STALL_S = 120.0  # the longest wait for vLLM's next output of a running request


async def first_output(
    outputs: AsyncIterator[RequestOutput], fallback: asyncio.Event, timeout_s: float
) -> RequestOutput | None:
    """The first output, or None once ``fallback`` is set (the KV will not come: the pending
    vLLM request is aborted). Raises TimeoutError when neither comes within ``timeout_s``."""
    nxt: asyncio.Future[RequestOutput] = asyncio.ensure_future(anext(outputs))
    failed = asyncio.ensure_future(fallback.wait())
    try:
        done, _ = await asyncio.wait(
            {nxt, failed}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        failed.cancel()
    if nxt in done:
        return nxt.result()
    nxt.cancel()  # vLLM's generate aborts the request when cancelled
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        await nxt
    if not done:
        raise TimeoutError(f"no output from vLLM within {timeout_s:.0f}s")
    return None


async def next_output(outputs: AsyncIterator[RequestOutput]) -> RequestOutput:
    return await asyncio.wait_for(anext(outputs), STALL_S)


async def close(outputs: AsyncIterator[Any]) -> None:
    aclose = getattr(outputs, "aclose", None)
    if aclose is not None:
        await aclose()


def token_event(
    request_id: str,
    out: RequestOutput,
    spec: SamplingSpec,
    cached_tokens: int,
    computed_tokens: int = 0,
    prompt: list[int] | None = None,  # on the first event: the prompt vLLM computed
) -> TokenEvent:
    """vLLM's cumulative output ``out`` as the event the gateway streams."""
    completion = out.outputs[0]
    logprobs = prompt_logprobs = None
    if spec.logprobs is not None and completion.logprobs is not None:
        logprobs = logprob_entries(completion.logprobs, completion.token_ids, spec.logprobs)
    if spec.prompt_logprobs is not None and prompt is not None and out.prompt_logprobs:
        prompt_logprobs = prompt_logprob_entries(out.prompt_logprobs, prompt, spec.prompt_logprobs)
    return TokenEvent(
        request_id=request_id,
        token_ids=list(completion.token_ids),
        text=completion.text,
        finished=out.finished,
        finish_reason=completion.finish_reason if out.finished else None,
        cached_tokens=cached_tokens,
        computed_tokens=computed_tokens,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )
