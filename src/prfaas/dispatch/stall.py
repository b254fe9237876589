"""A decode worker's token stream, read under a deadline: it ends, never hangs, when the
worker sends nothing for ``stall_s`` or the fleet stops hearing its heartbeats (a wedged
process, a silent partition), whichever comes first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Callable

POLL_S = 0.25  # how often a waiting read looks at the worker's health


class WorkerStalled(ConnectionError):
    """A decode worker stopped sending mid-stream."""


async def watched(
    chunks: AsyncIterable[bytes], name: str, stall_s: float, healthy: Callable[[], bool]
) -> AsyncGenerator[bytes, None]:
    """``chunks`` until they end; ``WorkerStalled`` once a read waited ``stall_s`` or
    ``healthy()`` turned false while one waited. One timer per stream, not per chunk: it
    cancels the reading task, and only while that task waits in a read (never while the
    consumer is busy with a chunk, e.g. a slow client)."""
    loop = asyncio.get_running_loop()
    it = aiter(chunks)
    reading_since: float | None = None
    reader: asyncio.Task[object] | None = None
    why: str | None = None
    timer: asyncio.TimerHandle

    def check() -> None:
        nonlocal timer, why
        if reading_since is not None and reader is not None:
            late = loop.time() - reading_since >= stall_s
            if late or not healthy():
                why = f"nothing for {stall_s:g} s" if late else "its heartbeats stopped"
                reader.cancel()
                return
        timer = loop.call_later(POLL_S, check)

    timer = loop.call_later(POLL_S, check)
    try:
        while True:
            reader, reading_since = asyncio.current_task(), loop.time()
            try:
                chunk = await anext(it, None)
            except asyncio.CancelledError:
                if why is None or reader is None or reader.uncancel() != 0:
                    raise  # cancelled from outside (client gone, shutdown)
                raise WorkerStalled(f"decode worker {name} stalled mid-stream: {why}") from None
            reading_since = None
            if chunk is None:
                return
            yield chunk
    finally:
        timer.cancel()
