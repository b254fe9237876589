"""One request's sequences (``n`` per prompt, choice ``i * n + j`` being sequence ``j`` of
prompt ``i``) as one OpenAI answer: a whole body, or their SSE chunks interleaved as they
come, each chunk naming its choice's index. Usage sums over the prompts (each counted once)
and over every choice's completion tokens."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from prfaas.api import sse
from prfaas.api.protocol import (
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChoice,
    DeltaMessage,
    PromptTokensDetails,
    Usage,
)
from prfaas.api.render import Output, Renderer
from prfaas.messages import TokenEvent


class SequenceRun(Protocol):
    """One generated sequence as the gateway runs it (``gateway.generation.Generation``)."""

    @property
    def route(self) -> str: ...

    def usage(self) -> Usage: ...  # its share of the request's usage
    def deltas(self) -> AsyncIterator[TokenEvent]: ...  # its events, the last finished
    async def collect(self) -> Output: ...
    async def close(self, status: int) -> None: ...


class Choices:
    def __init__(
        self, gens: Sequence[SequenceRun], renderer: Renderer, request_id: str, model: str
    ) -> None:
        self.gens = gens
        self.renderer = renderer
        self.prepared = renderer.prepared
        self.request_id = request_id
        self.model = model
        self.failed = False

    @property
    def route(self) -> str:
        return self.gens[0].route

    async def close(self, status: int) -> None:
        for gen in self.gens:
            await gen.close(status)

    def usage(self) -> Usage:
        shares = [g.usage() for g in self.gens]
        prompt = sum(u.prompt_tokens for u in shares)
        completion = sum(u.completion_tokens for u in shares)
        cached = sum(u.prompt_tokens_details.cached_tokens for u in shares)
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        )

    def _prompt(self, index: int) -> list[int]:
        return self.prepared.prompts[index // self.prepared.n]

    # ---- whole responses -------------------------------------------------------------------

    async def _outputs(self) -> list[Output]:
        return list(await asyncio.gather(*(g.collect() for g in self.gens)))

    async def chat_completion(self) -> ChatCompletion:
        outs = await self._outputs()
        choices = [self.renderer.chat_choice(i, out) for i, out in enumerate(outs)]
        return ChatCompletion(
            id=self.request_id, model=self.model, choices=choices, usage=self.usage()
        )

    async def completion(self) -> Completion:
        outs = await self._outputs()
        choices = [
            self.renderer.completion_choice(i, out, self._prompt(i)) for i, out in enumerate(outs)
        ]
        return Completion(id=self.request_id, model=self.model, choices=choices, usage=self.usage())

    # ---- streams ---------------------------------------------------------------------------

    async def chat_chunks(self, include_usage: bool) -> AsyncIterator[bytes]:
        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
            return sse.event(
                ChatCompletionChunk(
                    id=self.request_id, model=self.model, choices=choices, usage=usage
                )
            )

        for i in range(len(self.gens)):
            role = DeltaMessage(role="assistant", content="")
            yield chunk([ChatChunkChoice(index=i, delta=role)])
        async for i, delta in self._merged():
            if delta.text or delta.finished or delta.logprobs:
                yield chunk(
                    [
                        ChatChunkChoice(
                            index=i,
                            delta=DeltaMessage(content=delta.text),
                            finish_reason=delta.finish_reason if delta.finished else None,
                            logprobs=self.renderer.chat_logprobs(delta.logprobs),
                        )
                    ]
                )
        if include_usage:
            yield chunk([], self.usage())
        yield sse.DONE

    async def completion_chunks(self, include_usage: bool) -> AsyncIterator[bytes]:
        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
            return sse.event(
                Completion(id=self.request_id, model=self.model, choices=choices, usage=usage)
            )

        offsets = [0] * len(self.gens)  # each choice's text so far, for logprobs' text_offset
        async for i, delta in self._merged():
            if delta.text or delta.finished or delta.logprobs:
                logprobs = self.renderer.completion_logprobs(delta.logprobs, offsets[i])
                offsets[i] += len(delta.text)
                finish = delta.finish_reason if delta.finished else None
                yield chunk(
                    [
                        CompletionChoice(
                            index=i, text=delta.text, finish_reason=finish, logprobs=logprobs
                        )
                    ]
                )
        if include_usage:
            yield chunk([], self.usage())
        yield sse.DONE

    async def _merged(self) -> AsyncIterator[tuple[int, TokenEvent]]:
        """Every sequence's events, tagged with its choice index, in arrival order."""
        if len(self.gens) == 1:
            async for delta in self.gens[0].deltas():
                yield 0, delta
            return
        queue: asyncio.Queue[tuple[int, TokenEvent | BaseException | None]] = asyncio.Queue()

        async def pump(i: int, gen: SequenceRun) -> None:
            try:
                async for delta in gen.deltas():
                    queue.put_nowait((i, delta))
                queue.put_nowait((i, None))
            except Exception as exc:
                queue.put_nowait((i, exc))

        tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(self.gens)]
        try:
            left = len(tasks)
            while left:
                i, item = await queue.get()
                if item is None:
                    left -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield i, item
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
