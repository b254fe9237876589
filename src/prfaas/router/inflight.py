"""Prefill work the router has dispatched and not yet seen finish, per instance.

Heartbeats report an instance's queue every half second or so; a burst routed between two
heartbeats would all see the same stale queue and land on one instance. So the router
counts what it dispatches itself, the moment it decides (``add``), and the caller reports
the end of each prefill (``finish``: prefill done, failed or aborted). The counts are kept
as the sums an estimate of queued prefill time needs: requests, tokens and squared tokens
(with T(l) = a + b·l + c·l², Σ T(l_i) = a·n + b·Σl + c·Σl²).

This is the router's one record of in-flight prefills; it knows nothing of time, so a
caller that loses a request must still call ``finish`` (or ``drop_instance`` when the
instance goes away), or the instance looks busier than it is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueuedWork:
    """Unfinished prefills at one instance: counts and the sums of their incremental lengths."""

    requests: int = 0
    tokens: int = 0
    tokens_squared: int = 0

    def plus(self, tokens: int, sign: int = 1) -> QueuedWork:
        squared = self.tokens_squared + sign * tokens**2
        return QueuedWork(self.requests + sign, self.tokens + sign * tokens, squared)


class InflightPrefills:
    def __init__(self) -> None:
        self._by_request: dict[str, tuple[str, int]] = {}  # request id -> (instance, tokens)
        self._by_instance: dict[str, QueuedWork] = {}

    def __len__(self) -> int:
        return len(self._by_request)

    def add(self, request_id: str, instance: str, tokens: int) -> None:
        if request_id in self._by_request:
            raise ValueError(f"request {request_id!r} is already dispatched")
        self._by_request[request_id] = (instance, tokens)
        self._by_instance[instance] = self.work(instance).plus(tokens)

    def finish(self, request_id: str) -> None:
        """The request's prefill ended (done or failed); unknown ids are ignored."""
        entry = self._by_request.pop(request_id, None)
        if entry is None:
            return
        instance, tokens = entry
        left = self.work(instance).plus(tokens, sign=-1)
        if left.requests == 0:
            self._by_instance.pop(instance, None)
        else:
            self._by_instance[instance] = left

    def drop_instance(self, instance: str) -> None:
        """Forget an instance that left (crashed, converted): its requests end elsewhere."""
        self._by_instance.pop(instance, None)
        gone = [r for r, (name, _) in self._by_request.items() if name == instance]
        for request_id in gone:
            del self._by_request[request_id]

    def work(self, instance: str) -> QueuedWork:
        return self._by_instance.get(instance, QueuedWork())
