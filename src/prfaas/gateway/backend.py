"""What the gateway talks to: a backend that runs a tokenized request somewhere.

The gateway authenticates, validates and tokenizes; the backend decides where the request
runs (one local engine, or the cluster router: PrfaaS or PD-P) and streams its tokens back.

Contract of ``Backend.submit``: it returns once the request is admitted and its route is
known, or raises ``ValueError`` (input the backend cannot serve → 400), ``Overloaded``
(→ 429 with Retry-After) or ``NoWorker`` (→ 503). The handle's ``events`` end with a delta
whose ``finished`` is set; if the gateway stops iterating early (client gone) it closes
``events`` (``aclose``), and the backend must then abort the request and free its blocks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.outputs import TokenDelta
from prfaas.engine.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """No capacity now; the client should retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: float, message: str = "the server is overloaded") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NoWorker(Exception):
    """No instance can serve the request (none registered, or none reachable)."""


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    tenant: str
    tenant_salt: bytes  # derived by the gateway from the authenticated tenant, never the client
    prompt_token_ids: list[int]
    params: SamplingParams


@dataclass
class GenerationHandle:
    """An admitted request. ``route`` names the path and instances, e.g.
    ``"pd-p prefill=pd-p-0 decode=pd-d-0"``; its first word is the route kind used as a
    metrics label. ``cached_tokens`` (prompt tokens served from a prefix cache) may be
    updated by the backend until ``events`` ends."""

    route: str
    cached_tokens: int
    events: AsyncIterator[TokenDelta]


class Backend(Protocol):
    model_name: str
    max_model_len: int
    tokenizer: Any  # a Hugging Face tokenizer with a chat template

    async def submit(self, req: GenerationRequest) -> GenerationHandle: ...


class LocalBackend:
    """One in-process engine (route ``local``): for tests and single-process serving."""

    def __init__(self, async_engine: AsyncEngine, model_name: str) -> None:
        self.engine = async_engine
        self.model_name = model_name
        self.max_model_len = async_engine.max_model_len
        self.tokenizer = async_engine.tokenizer

    async def submit(self, req: GenerationRequest) -> GenerationHandle:
        events = self.engine.generate(
            req.prompt_token_ids, req.params, req.request_id, tenant_salt=req.tenant_salt
        )
        # Pull the first delta here so that input errors surface before any response starts.
        try:
            first = await anext(events)
        except BaseException:
            await aclose(events)
            raise
        cached = self.engine.num_cached_tokens(req.request_id) or 0
        return GenerationHandle("local", cached, _prepend(first, events))


async def _prepend(first: TokenDelta, rest: AsyncIterator[TokenDelta]) -> AsyncIterator[TokenDelta]:
    try:
        yield first
        if not first.finished:
            async for delta in rest:
                yield delta
    finally:
        await aclose(rest)


async def aclose(events: AsyncIterator[TokenDelta]) -> None:
    """Close a delta stream early (its producer then aborts the request); no-op if done."""
    if isinstance(events, AsyncGenerator):
        await events.aclose()
