"""One admitted sequence between the backend and its HTTP response: its token events, its
timings and its metrics (recorded once, when it closes). ``choices.py`` turns one request's
sequences (``n`` per prompt) into OpenAI bodies and SSE chunks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from prfaas.api import sse
from prfaas.api.choices import Choices
from prfaas.api.protocol import ErrorInfo, ErrorResponse, PromptTokensDetails, Usage
from prfaas.api.render import Output
from prfaas.gateway.backend import GenerationHandle, aclose
from prfaas.gateway.metrics import GatewayMetrics, route_kind
from prfaas.messages import TokenEvent

logger = logging.getLogger(__name__)


class IncompleteStreamError(RuntimeError):
    """The backend's events ended without a finished delta."""


class Generation:
    def __init__(
        self,
        handle: GenerationHandle,
        metrics: GatewayMetrics,
        *,
        request_id: str,
        model: str,
        num_prompt_tokens: int,
        arrival_s: float,
        release: Callable[[], None],
        counts_prompt: bool = True,
        counts_output: bool = True,
    ) -> None:
        self.handle = handle
        # What this sequence adds to its request's usage: a sibling (n > 1) shares its
        # prompt with the first sequence, which counts it; echo with max_tokens 0 no output.
        self.counts_prompt, self.counts_output = counts_prompt, counts_output
        self.request_id = request_id
        self.model = model
        self.num_prompt_tokens = num_prompt_tokens
        self.num_output_tokens = 0
        self.failed = False
        self._metrics = metrics
        self._arrival_s = arrival_s
        self._first_s: float | None = None
        self._last_s: float | None = None
        self._release: Callable[[], None] | None = release
        self._buffered: TokenEvent | None = None

    @property
    def route(self) -> str:
        return self.handle.route

    def usage(self) -> Usage:
        """This sequence's share of its request's usage (the one place it is derived)."""
        prompt = self.num_prompt_tokens if self.counts_prompt else 0
        completion = self.num_output_tokens if self.counts_output else 0
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=PromptTokensDetails(
                cached_tokens=self.handle.cached_tokens if self.counts_prompt else 0
            ),
        )

    async def prefetch(self) -> None:
        """Wait for the first event (the prompt is then computed and its full blocks cached:
        a sibling with the same prompt submitted now shares them)."""
        if self._buffered is None:
            self._buffered = await anext(aiter(self.handle.events), None)

    async def deltas(self) -> AsyncIterator[TokenEvent]:
        if self._buffered is not None:
            first, self._buffered = self._buffered, None
            self._stamp(first)
            yield first
            if first.finished:
                return
        async for delta in self.handle.events:
            self._stamp(delta)
            yield delta
            if delta.finished:
                return
        # A backend stream must end with a finished delta; anything else is a lost request
        # (e.g. a worker gone), reported as such, never passed off as a complete answer.
        raise IncompleteStreamError(f"request {self.request_id}: the backend stream ended early")

    def _stamp(self, delta: TokenEvent) -> None:
        now = time.perf_counter()
        if self._first_s is None:
            self._first_s = now
        self._last_s = now
        self.num_output_tokens += len(delta.token_ids)

    async def collect(self) -> Output:
        out = Output()
        async for delta in self.deltas():
            out.add(delta)
        return out

    async def close(self, status: int) -> None:
        """Stop the backend stream (aborts an unfinished request), free the admission slot
        and record the request's metrics. Idempotent."""
        if self._release is None:
            return
        release, self._release = self._release, None
        try:
            await aclose(self.handle.events)
        finally:
            release()
            self._observe(status)

    def _observe(self, status: int) -> None:
        m, route = self._metrics, route_kind(self.route)
        m.requests.labels(route, str(status)).inc()
        m.prompt_tokens.inc(self.num_prompt_tokens)
        m.cached_tokens.inc(self.handle.cached_tokens)
        m.generation_tokens.inc(self.num_output_tokens)
        if self._first_s is None or self._last_s is None:
            return
        m.ttft_s.labels(route).observe(self._first_s - self._arrival_s)
        m.e2e_s.labels(route).observe(self._last_s - self._arrival_s)
        if self.num_output_tokens > 1:
            tpot = (self._last_s - self._first_s) / (self.num_output_tokens - 1)
            m.tpot_s.labels(route).observe(tpot)


class SlowReader(Exception):
    """The client stopped reading its stream: a write waited past its deadline."""


class GenerationStream(StreamingResponse):
    """An SSE response that closes its generation(s) however the connection ends. Each write
    waits at most ``write_timeout_s`` for the client to read (the transport buffers a
    bounded amount); past it the request is aborted, its slots and blocks given back."""

    def __init__(
        self, generation: Choices, chunks: AsyncIterator[bytes], write_timeout_s: float
    ) -> None:
        self.generation = generation
        self.write_timeout_s = write_timeout_s
        super().__init__(
            self._until_failure(chunks),
            media_type="text/event-stream",
            headers={"x-prfaas-route": generation.route, "cache-control": "no-cache"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_within(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), self.write_timeout_s)
            except TimeoutError:
                raise SlowReader from None

        try:
            await super().__call__(scope, receive, send_within)
        except SlowReader:
            logger.warning(
                "request %s aborted: its client read nothing for %g s",
                self.generation.request_id,
                self.write_timeout_s,
            )
            self.generation.failed = True
        finally:
            await self.generation.close(500 if self.generation.failed else 200)

    async def _until_failure(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The chunks; a backend failure mid-stream becomes an error event (status 200 is
        already sent), never a silently truncated answer."""
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as exc:
            logger.exception("request %s failed mid-stream", self.generation.request_id)
            self.generation.failed = True
            info = ErrorInfo(
                message=f"generation failed: {type(exc).__name__}", type="server_error"
            )
            yield sse.error_event(ErrorResponse(error=info))
            yield sse.DONE
