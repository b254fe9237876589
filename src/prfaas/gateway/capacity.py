"""Decode capacity: a bounded number of requests per decode worker, and a bounded queue with a
time-to-live in front of them.

The cluster gateway admits a request only while some healthy decode worker holds fewer than
``max_inflight_per_decode`` of its requests. Otherwise the request waits in a FIFO queue of at
most ``max_queued`` entries for at most ``queue_ttl_s``; a full queue or an expired wait is
``Overloaded`` (429 + Retry-After), and no healthy decode worker at all is ``NoWorker`` (503).
So an overload costs a quick refusal instead of an ever longer queue: admitted requests keep
their time per output token and the gateway's memory stays flat.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from prfaas.gateway.backend import NoWorker, Overloaded

T = TypeVar("T")


@dataclass(frozen=True)
class CapacityConfig:
    max_inflight_per_decode: int = 32  # requests one decode worker holds (waiting + running)
    max_queued: int = 256  # requests waiting at the gateway for a slot
    queue_ttl_s: float = 5.0  # longest wait for a slot; then 429
    retry_after_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_inflight_per_decode < 1 or self.max_queued < 0:
            raise ValueError("max_inflight_per_decode must be >= 1 and max_queued >= 0")
        if self.queue_ttl_s <= 0 or self.retry_after_s <= 0:
            raise ValueError("queue_ttl_s and retry_after_s must be positive")


class DecodeCapacity:
    """Counts admitted requests against ``num_decode() * max_inflight_per_decode`` slots.

    ``num_decode`` returns how many healthy, non-draining decode workers there are now; the
    router then sends each admitted request to the least loaded of them, so the per-worker
    bound holds as long as the gateway's counts drive the choice."""

    def __init__(self, config: CapacityConfig, num_decode: Callable[[], int]) -> None:
        self.config = config
        self._num_decode = num_decode
        self.admitted = 0
        self._waiters: deque[asyncio.Future[None]] = deque()  # FIFO; a result = a slot

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _free(self) -> bool:
        return self.admitted < self._num_decode() * self.config.max_inflight_per_decode

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if needed; Overloaded or NoWorker otherwise."""
        if self._num_decode() == 0:
            raise NoWorker("no healthy decode worker")
        if self._free() and not self._waiters:  # nobody ahead of us: FIFO holds
            self.admitted += 1
            return
        if len(self._waiters) >= self.config.max_queued:
            raise Overloaded(self.config.retry_after_s, "decode capacity and queue are full")
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await asyncio.wait_for(asyncio.shield(slot), self.config.queue_ttl_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if slot.done():  # granted just as we gave up: hand it on
                self.release()
            else:
                slot.cancel()
                self._waiters.remove(slot)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise Overloaded(
                self.config.retry_after_s, "timed out waiting for decode capacity"
            ) from None

    def release(self) -> None:
        self.admitted = max(0, self.admitted - 1)
        self.grant()

    def grant(self) -> None:
        """Hand free slots to the oldest waiters (also call it when a decode worker joins)."""
        while self._waiters and self._free():
            self._waiters.popleft().set_result(None)
            self.admitted += 1


class ClosingEvents(AsyncGenerator[T, None]):
    """An event stream whose ``aclose`` always runs ``cleanup``, even if it was never
    iterated: a plain async generator closed before its first step skips its ``finally``,
    and a request whose client left that early would keep its slot for ever."""

    def __init__(self, events: AsyncGenerator[T, None], cleanup: Callable[[], Awaitable[None]]):
        self._events = events
        self._cleanup = cleanup

    async def asend(self, value: None) -> T:
        return await self._events.asend(value)

    async def athrow(self, *args: Any) -> T:
        return await self._events.athrow(*args)

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            await self._cleanup()
