"""A decode worker's NDJSON token stream, read as ``TokenEvent``s under the stall watch.

A stream that expects KV opens with the worker's reservation (``TokenEvent.reserved``):
``reservation`` reads it before the gateway lets any KV be sent. The rest arrives as one
list of events per chunk read (each validated); an error event, an oversized line, a stall
or a body that ends before its finished event raise. However the reading ends, the response
is released (back to the pool if read to its end, else closed).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

import aiohttp

from prfaas.dispatch.stall import watched
from prfaas.dispatch.worker_client import WorkerClient
from prfaas.messages import DecodeCommand, TokenEvent

# One NDJSON token event from a decode worker, at most: the first one may carry the prompt's
# logprobs (echo with logprobs), up to ~600 bytes per prompt token.
MAX_EVENT_BYTES = 1 << 26
Batches = AsyncGenerator[list[TokenEvent], None]


async def token_events(
    response: aiohttp.ClientResponse, name: str, stall_s: float, healthy: Callable[[], bool]
) -> Batches:
    chunks = watched(response.content.iter_any(), name, stall_s, healthy)
    try:
        buffer, finished = b"", False
        while True:
            chunk = await anext(chunks, None)
            if chunk is None:  # the body ended: a last line may lack its newline
                lines, buffer = [buffer], b""
            else:
                buffer += chunk
                if len(buffer) > MAX_EVENT_BYTES:
                    raise ValueError(f"decode worker {name} sent an oversized event")
                *lines, buffer = buffer.split(b"\n")
            events: list[TokenEvent] = []
            for line in lines:
                if not line or finished:
                    # After the last event the worker ends the body; reading to its end
                    # (not closing early) keeps the connection alive for the next request.
                    continue
                event = TokenEvent.decode(line)
                if event.error is not None:
                    raise ValueError(event.error)
                finished = event.finished
                events.append(event)
            if events:
                yield events
            if chunk is None:
                break
        if not finished:
            raise ConnectionError(f"decode worker {name} closed the stream early")
    finally:
        await chunks.aclose()  # its watch timer stops
        response.release()


async def reservation(batches: Batches, name: str) -> tuple[bool, list[TokenEvent]]:
    """The first event's ``reserved``, and the events that came in the same chunk after it."""
    first, *rest = await anext(batches)
    if first.reserved is None:
        raise ConnectionError(f"decode worker {name} did not report its reservation")
    return first.reserved, rest


async def open_decode(
    workers: WorkerClient, name: str, url: str, cmd: DecodeCommand, stall_s: float,
    healthy: Callable[[], bool],
) -> Batches | int:  # fmt: skip
    """``cmd``'s token stream at the decode worker ``name`` (``url``), or the HTTP status it
    answered instead; ``WorkerCallError`` if it cannot be reached in time."""
    response = await workers.open_stream(url + "/decode", cmd.encode())
    if response.status != 200:
        response.release()
        return response.status
    return token_events(response, name, stall_s, healthy)
