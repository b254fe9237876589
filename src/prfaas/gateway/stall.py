"""A decode worker's token stream, read under a deadline: it ends, never hangs, when the
worker sends nothing for ``stall_s`` or the fleet stops hearing its heartbeats (a wedged
process, a silent partition), whichever comes first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable

POLL_S = 0.25  # how often a waiting read looks at the worker's health


class WorkerStalled(ConnectionError):
    """A decode worker stopped sending mid-stream."""


async def watched(
    chunks: AsyncIterable[bytes], name: str, stall_s: float, healthy: Callable[[], bool]
) -> AsyncIterator[bytes]:
    """``chunks`` until they end; ``WorkerStalled`` once none came for ``stall_s`` or
    ``healthy()`` turns false while waiting. A read is never cancelled between polls, only
    when the stream is given up (its bytes are then of no use)."""
    loop = asyncio.get_running_loop()
    it = aiter(chunks)
    while True:
        read = asyncio.ensure_future(anext(it, None))
        deadline = loop.time() + stall_s
        try:
            while True:
                await asyncio.wait({read}, timeout=min(POLL_S, max(0.0, deadline - loop.time())))
                if read.done():
                    break
                late = loop.time() >= deadline
                if late or not healthy():
                    why = f"nothing for {stall_s:g} s" if late else "its heartbeats stopped"
                    raise WorkerStalled(f"decode worker {name} stalled mid-stream: {why}")
        finally:
            read.cancel()  # no-op once done
        chunk = read.result()
        if chunk is None:
            return
        yield chunk
