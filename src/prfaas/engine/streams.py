"""The asyncio side's end of each request an ``AsyncEngine`` runs: its deltas in order.

Loop only: the engine thread hands deltas over with ``call_soon_threadsafe(deliver, ...)``.
A stream also remembers the request's prefix hit and computed prompt tokens once its first
delta came.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from prfaas.engine.outputs import TokenDelta
from prfaas.engine.request import Request


@dataclass(frozen=True)
class PromptTokens:
    """How a request's prompt was served, known at its first delta: tokens from this
    engine's prefix cache and tokens it computed. (0, 0) when its KV landed from elsewhere."""

    cached: int
    computed: int


@dataclass
class Stream:
    deltas: asyncio.Queue[TokenDelta | BaseException]
    prompt: PromptTokens | None = None


class Streams:
    def __init__(self) -> None:
        self._streams: dict[str, Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, request_id: str) -> Stream:
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        stream = Stream(asyncio.Queue())
        self._streams[request_id] = stream
        return stream

    def forget(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

    def prompt_tokens(self, request_id: str) -> PromptTokens | None:
        stream = self._streams.get(request_id)
        return None if stream is None else stream.prompt

    async def follow(
        self, request_id: str, stream: Stream, close: Callable[[str, bool], None]
    ) -> AsyncIterator[TokenDelta]:
        """Yield the deltas up to the finished one; ``close(request_id, abort)`` at the end,
        with ``abort`` when the consumer stopped first or the engine failed."""
        finished = False
        try:
            while not finished:
                item = await stream.deltas.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
        finally:
            close(request_id, not finished)

    def deliver(self, deltas: list[TokenDelta], prompts: dict[str, PromptTokens]) -> None:
        """One step's deltas; ``prompts``: how requests at their first delta were served."""
        for request_id, prompt in prompts.items():
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.prompt = prompt
        for delta in deltas:
            stream = self._streams.get(delta.request_id)
            if stream is not None:
                stream.deltas.put_nowait(delta)

    def fail_all(self, error: BaseException) -> None:
        for stream in self._streams.values():
            stream.deltas.put_nowait(error)


class PromptLedger:
    """Engine-thread side: how each admitted request's prompt was served, known at its first
    delta (a prefix hit and what was computed here, or (0, 0) when its KV landed), and the
    totals over every request so far (``EngineStats``)."""

    def __init__(self) -> None:
        self._admitted: dict[str, Request] = {}  # not yet at its first delta
        self._landed: set[str] = set()
        self.num_prompt_tokens = 0
        self.num_cached_tokens = 0

    def admitted(self, req: Request) -> None:
        self._admitted[req.request_id] = req

    def landed(self, request_id: str) -> None:
        self._landed.add(request_id)

    def forget(self, request_id: str) -> None:
        self._admitted.pop(request_id, None)
        self._landed.discard(request_id)

    def first_deltas(self, deltas: list[TokenDelta]) -> dict[str, PromptTokens]:
        """How the prompts of the requests at their first delta in ``deltas`` were served."""
        prompts: dict[str, PromptTokens] = {}
        for delta in deltas:
            req = self._admitted.pop(delta.request_id, None)
            if req is None:
                continue
            hit, total = req.num_cached_tokens, req.num_prompt_tokens
            landed = delta.request_id in self._landed
            self._landed.discard(delta.request_id)
            prompts[delta.request_id] = (
                PromptTokens(0, 0) if landed else PromptTokens(hit, total - hit)
            )
            self.num_prompt_tokens += total
            self.num_cached_tokens += hit
        return prompts
