"""What crosses the engine thread's boundary: typed commands in, stats out.

``AsyncEngine`` (on the asyncio loop) puts one command at a time on the thread's queue; the
thread runs it on the ``Engine`` between steps and answers on the command's future (where
it has one). A command is a small frozen record, never a closure, so the thread's whole
vocabulary is this file; ``Inspect`` is the one exception, kept for tests and diagnostics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prfaas.engine.engine import Engine, LayerSink
from prfaas.engine.handoff import KvPayload
from prfaas.engine.logprobs import TokenLogprobs
from prfaas.engine.outputs import TokenDelta
from prfaas.engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class Admit:
    """Queue a request to generate here (prefill and decode). Answers None, or the
    ValueError of input the engine refuses."""

    prompt_token_ids: list[int]
    params: SamplingParams
    request_id: str
    tenant_salt: bytes = b""
    resumed: list[int] | tuple[()] = ()  # outputs another instance streamed (failover)


@dataclass(frozen=True)
class StreamPrefill:
    """Queue a prefill-only request whose KV goes to ``sink`` layer by layer as its last
    chunk computes (``Engine.stream_layers``). Answers ``PrefillDone`` once the first token
    is sampled and the blocks are free."""

    prompt_token_ids: list[int]
    params: SamplingParams
    request_id: str
    sink: LayerSink
    tenant_salt: bytes = b""


@dataclass(frozen=True)
class Reserve:
    """Hold blocks for a request whose prompt KV will come (``LandKv``) or not (``FailKv``).
    Answers False, holding nothing, when the pool cannot now."""

    prompt_token_ids: list[int]
    params: SamplingParams
    request_id: str
    tenant_salt: bytes = b""


@dataclass(frozen=True)
class LandKv:
    """Write a reserved request's KV; it then decodes. Answers None or the KvImportError
    (the request stays reserved)."""

    request_id: str
    payload: KvPayload


@dataclass(frozen=True)
class FailKv:
    """The reserved request's KV will not land: prefill it here (the fallback). No answer."""

    request_id: str


@dataclass(frozen=True)
class Abort:
    """End a request wherever it is and free its blocks. No answer."""

    request_id: str


@dataclass(frozen=True)
class ImportPrefix:
    """Land a payload as prefix cache only (a cache pull). Answers the tokens now cached."""

    payload: KvPayload
    tenant_salt: bytes = b""


@dataclass(frozen=True)
class Inspect:
    """Run ``fn(engine)`` on the thread and answer its result: tests and diagnostics only
    (integrity checks, block counts), never a request's path."""

    fn: Callable[[Engine], Any]


Command = Admit | StreamPrefill | Reserve | LandKv | FailKv | Abort | ImportPrefix | Inspect


@dataclass(frozen=True)
class PrefillDone:
    """A streamed prefill's answer: its first sampled token, and the prompt tokens this
    engine served from its prefix cache instead of computing them."""

    first_token_id: int
    num_cached_tokens: int
    # The first token's logprobs and the prompt's, when the request asked for them: they
    # travel with the KV (``prefill/kv_export.py``) to the side that streams the tokens.
    first_logprobs: TokenLogprobs | None = None
    prompt_logprobs: list[TokenLogprobs | None] | None = None

    @classmethod
    def of(cls, token_id: int, num_cached_tokens: int, delta: TokenDelta) -> PrefillDone:
        """With the logprobs the request's first delta carries."""
        first = delta.logprobs[0] if delta.logprobs else None
        return cls(token_id, num_cached_tokens, first, delta.prompt_logprobs)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot taken on the engine thread after its latest round.

    ``num_prompt_tokens`` and ``num_cached_tokens`` count every request admitted so far
    (their ratio is the prefix hit rate); ``fallbacks`` counts KV hand-offs that failed and
    were prefilled locally instead; ``num_queued_tokens`` is the prompt tokens of waiting
    and running requests not yet computed (the prefill backlog the control loop watches).
    """

    num_waiting: int = 0
    num_running: int = 0
    num_parked: int = 0
    kv_usage: float = 0.0
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    fallbacks: int = 0
    num_queued_tokens: int = 0


class EngineError(RuntimeError):
    """The engine failed while stepping, or shut down; the request was aborted."""


def settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    """Complete ``future`` on its loop, unless its waiter has given up (cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
