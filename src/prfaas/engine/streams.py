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
