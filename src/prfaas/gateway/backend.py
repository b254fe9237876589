"""What the gateway talks to: a backend that runs a tokenized request somewhere.

The gateway authenticates, validates and tokenizes; the backend decides where the request
runs (one local engine, or the cluster router: PrfaaS or PD-P) and streams its tokens back.

Contract of ``Backend.submit``: it returns once the request is admitted and its route is
known, or raises ``ValueError`` (input the backend cannot serve → 400), ``Overloaded``
(→ 429 with Retry-After) or ``NoWorker`` (→ 503). The handle's ``events`` (``TokenEvent``s,
the decode workers' own message) end with one whose ``finished`` is set; if the gateway stops
iterating early (client gone) it closes ``events`` (``aclose``), and the backend must then
abort the request and free its blocks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from prfaas.messages import SamplingSpec, TokenEvent

logger = logging.getLogger(__name__)

__all__ = ["Backend", "GenerationHandle", "GenerationRequest", "NoWorker", "Overloaded", "aclose"]


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
    params: SamplingSpec


@dataclass
class GenerationHandle:
    """An admitted request. ``route`` names the path and instances, e.g.
    ``"pd-p prefill=pd-p-0 decode=pd-d-0"``; its first word is the route kind used as a
    metrics label. ``cached_tokens`` is the engine's real prefix hit (prompt tokens it did not
    compute), as the instance that prefilled reported it; the backend may update it until
    ``events`` ends."""

    route: str
    cached_tokens: int
    events: AsyncIterator[TokenEvent]
    decode_instance: str | None = None  # where it runs, counted there by ``Admission``


class Backend(Protocol):
    model_name: str
    max_model_len: int
    tokenizer: Any  # a Hugging Face tokenizer with a chat template

    def num_decode(self) -> int | None:
        """Healthy decode instances that take requests now (admission bounds requests per
        instance); None if the backend has none to bound (one in-process engine)."""
        ...

    async def submit(self, req: GenerationRequest) -> GenerationHandle: ...


async def aclose(events: AsyncIterator[Any]) -> None:
    """Close an event stream early (its producer then aborts the request); no-op if done."""
    if isinstance(events, AsyncGenerator):
        await events.aclose()
