"""Admission: the one owner of the gateway's in-flight requests.

A request is admitted while fewer than ``max_in_flight`` are in flight and, when the backend
has decode instances (the cluster backend), while fewer than ``num_decode() *
max_inflight_per_decode`` are. Otherwise it waits in a FIFO queue of at most ``max_queued``
entries for at most ``queue_ttl_s``; a full queue, a full gateway or an expired wait is
``Overloaded`` (429 + Retry-After), and no healthy decode instance at all is ``NoWorker``
(503). So an overload costs a quick refusal instead of an ever longer queue: admitted
requests keep their time per output token and the gateway's memory stays flat.

Once routed, a request is counted against its decode instance (``assign``); the fleet view
reads ``by_instance`` as the load the router balances, so the per-instance bound holds as
long as the gateway's counts drive the choice. A request whose decode stream failed over
moves to its new instance (``move``); ``release`` undoes both counts, once, wherever the
request ended.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

from prfaas.gateway.backend import NoWorker, Overloaded
from prfaas.gateway.config import GatewayConfig

T = TypeVar("T")


class Admission:
    def __init__(self, config: GatewayConfig, num_decode: Callable[[], int | None]) -> None:
        self.config = config
        self._num_decode = num_decode  # None: the backend has no decode instances to bound
        self.in_flight = 0  # admitted and not yet released
        self.by_instance: dict[str, int] = {}  # of those, per decode instance they run on
        self._instance_of: dict[str, str] = {}  # request id -> its decode instance
        self._waiters: deque[asyncio.Future[None]] = deque()  # FIFO; a result = a slot

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def bounds_decode(self) -> bool:
        """Whether the wait for a slot is bounded here (else the caller bounds its submit)."""
        return self._num_decode() is not None

    def _free(self) -> bool:
        n = self._num_decode()
        if n is not None and self.in_flight >= n * self.config.max_inflight_per_decode:
            return False
        return self.in_flight < self.config.max_in_flight

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if needed; Overloaded or NoWorker otherwise."""
        if self._num_decode() == 0:
            raise NoWorker("no healthy decode worker")
        if self._free() and not self._waiters:  # nobody ahead of us: FIFO holds
            self.in_flight += 1
            return
        retry = self.config.retry_after_s
        if self.in_flight >= self.config.max_in_flight:
            raise Overloaded(retry, f"more than {self.config.max_in_flight} requests in flight")
        if len(self._waiters) >= self.config.max_queued:
            raise Overloaded(retry, "decode capacity and queue are full")
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await asyncio.wait_for(asyncio.shield(slot), self.config.queue_ttl_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if slot.done():  # granted just as we gave up: hand it on
                self.release("")
            else:
                slot.cancel()
                self._waiters.remove(slot)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise Overloaded(retry, "timed out waiting for decode capacity") from None

    def assign(self, request_id: str, instance: str) -> None:
        """Count an admitted request against the decode instance it was routed to."""
        self._instance_of[request_id] = instance
        self.by_instance[instance] = self.by_instance.get(instance, 0) + 1

    def move(self, request_id: str, instance: str) -> None:
        """A request's decode stream resumed at ``instance`` (failover): count it there, not
        at the instance it left. Nothing for a request already released (or never counted)."""
        if request_id not in self._instance_of:
            return
        self._uncount(self._instance_of[request_id])
        self.assign(request_id, instance)

    def release(self, request_id: str) -> None:
        """Give back an admitted request's slot (call once per ``acquire``)."""
        self.in_flight = max(0, self.in_flight - 1)
        instance = self._instance_of.pop(request_id, None)
        if instance is not None:
            self._uncount(instance)
        self.grant()

    def _uncount(self, instance: str) -> None:
        left = self.by_instance[instance] - 1
        if left > 0:
            self.by_instance[instance] = left
        else:
            del self.by_instance[instance]

    def grant(self) -> None:
        """Hand free slots to the oldest waiters (the fleet calls it when an instance joins)."""
        while self._waiters and self._free():
            self._waiters.popleft().set_result(None)
            self.in_flight += 1


class ClosingEvents(AsyncGenerator[T, None]):
    """An event stream whose ``aclose`` always runs ``cleanup``, even if it was never
    iterated: a plain async generator closed before its first step skips its ``finally``,
    and a request whose client left that early would keep its slot for ever. ``cleanup``
    may return an awaitable: it is awaited."""

    def __init__(self, events: AsyncGenerator[T, None], cleanup: Callable[[], object]):
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
            done = self._cleanup()
            if inspect.isawaitable(done):
                await done
