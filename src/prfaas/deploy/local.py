"""One in-process engine as the gateway's backend (route ``local``): tests and
single-process serving. Outside ``gateway/`` because it imports the engine (and torch); it
speaks the gateway's messages (``SamplingSpec`` in, ``TokenEvent`` out) like a decode worker."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.engine import Engine
from prfaas.engine.outputs import TokenDelta
from prfaas.gateway.app import create_app
from prfaas.gateway.backend import GenerationHandle, GenerationRequest, aclose
from prfaas.gateway.config import GatewayConfig
from prfaas.messages import TokenEvent
from prfaas.sampling import to_entries, to_prompt_entries, to_sampling_params


class LocalBackend:
    """One in-process engine (route ``local``): for tests and single-process serving."""

    def __init__(self, async_engine: AsyncEngine, model_name: str) -> None:
        self.engine = async_engine
        self.model_name = model_name
        self.max_model_len = async_engine.max_model_len
        # The engine thread detokenizes with its tokenizer; the gateway tokenizes with its own
        # copy, so the two threads never share one (fast tokenizers can fail when shared).
        self.tokenizer = copy.deepcopy(async_engine.tokenizer)

    def num_decode(self) -> None:
        return None  # one engine: the app bounds in-flight requests, not per instance

    async def submit(self, req: GenerationRequest) -> GenerationHandle:
        params = to_sampling_params(req.params)
        deltas = self.engine.generate(
            req.prompt_token_ids, params, req.request_id, tenant_salt=req.tenant_salt
        )
        # Pull the first delta here so that input errors surface before any response starts.
        try:
            first = await anext(deltas)
        except BaseException:
            await aclose(deltas)
            raise
        served = self.engine.prompt_tokens(req.request_id)
        cached = served.cached if served else 0
        return GenerationHandle("local", cached, _events(first, deltas))


def create_local_app(
    engine: Engine, model_name: str, config: GatewayConfig | None = None
) -> FastAPI:
    """A single-process server: the gateway in front of one engine, whose thread starts and
    stops with the app (its lifespan)."""
    async_engine = AsyncEngine(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async_engine.start()
        try:
            yield
        finally:
            await async_engine.shutdown()

    return create_app(LocalBackend(async_engine, model_name), config, lifespan=lifespan)


def _event(delta: TokenDelta) -> TokenEvent:
    # Built by us from engine output: no validation on this per-token path.
    return TokenEvent.model_construct(
        request_id=delta.request_id,
        token_ids=delta.new_token_ids,
        text=delta.new_text,
        finished=delta.finished,
        finish_reason=delta.finish_reason,
        logprobs=to_entries(delta.logprobs),
        prompt_logprobs=to_prompt_entries(delta.prompt_logprobs),
    )


async def _events(first: TokenDelta, rest: AsyncIterator[TokenDelta]) -> AsyncIterator[TokenEvent]:
    try:
        yield _event(first)
        if not first.finished:
            async for delta in rest:
                yield _event(delta)
    finally:
        await aclose(rest)
