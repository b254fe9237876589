"""One in-process engine as the gateway's backend (route ``local``): tests and
single-process serving. Kept apart from ``backend`` because it imports torch."""

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


class LocalBackend:
    """One in-process engine (route ``local``): for tests and single-process serving."""

    def __init__(self, async_engine: AsyncEngine, model_name: str) -> None:
        self.engine = async_engine
        self.model_name = model_name
        self.max_model_len = async_engine.max_model_len
        # The engine thread detokenizes with its tokenizer; the gateway tokenizes with its own
        # copy, so the two threads never share one (fast tokenizers can fail when shared).
        self.tokenizer = copy.deepcopy(async_engine.tokenizer)

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


async def _prepend(first: TokenDelta, rest: AsyncIterator[TokenDelta]) -> AsyncIterator[TokenDelta]:
    try:
        yield first
        if not first.finished:
            async for delta in rest:
                yield delta
    finally:
        await aclose(rest)
