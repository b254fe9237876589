"""Token-bucket limits per tenant: requests per second and tokens per minute.

A bucket holds at most ``capacity`` units and refills at ``rate_per_s``; taking ``n`` units
needs ``n`` in the bucket. Over any window of ``T`` seconds a bucket grants at most
``capacity + rate_per_s * T`` units, so the sustained rate is the configured one and
``capacity`` is the burst allowed on top of it.

Tokens are reserved at admission as ``prompt tokens + max completion tokens`` (the most the
request can cost) and corrected to the actual ``prompt + completion`` tokens when it ends
(``settle``): the unused part goes back into the bucket. A bucket's level may end below zero
only through ``settle`` charging more than was reserved (never by admission), and refills
from there, so every token a request used is charged.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Clock = Callable[[], float]  # seconds, monotonic
EPSILON = 1e-9  # units


class RateLimited(Exception):
    """A tenant is over one of its limits; it may retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: float, message: str) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class TenantLimits:
    """One tenant's limits; None: unlimited. Bursts default to one second of requests
    (at least one) and one minute of tokens."""

    requests_per_s: float | None = None
    tokens_per_min: float | None = None
    burst_requests: float | None = None
    burst_tokens: float | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_s", "tokens_per_min", "burst_requests", "burst_tokens"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.burst_requests is not None and self.requests_per_s is None:
            raise ValueError("burst_requests needs requests_per_s")
        if self.burst_tokens is not None and self.tokens_per_min is None:
            raise ValueError("burst_tokens needs tokens_per_min")


class TokenBucket:
    def __init__(self, rate_per_s: float, capacity: float, clock: Clock) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._clock = clock
        self._level = capacity  # starts full
        self._at_s = clock()

    def level(self) -> float:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._at_s) * self.rate_per_s)
        self._at_s = now
        return self._level

    def wait_s(self, n: float) -> float:
        """Seconds until ``n`` units are in the bucket (0: now). A shortfall below
        ``EPSILON`` is float rounding of the refill, not a lack."""
        short = n - self.level()
        return short / self.rate_per_s if short > EPSILON else 0.0

    def take(self, n: float) -> None:
        self._level = self.level() - n

    def give_back(self, n: float) -> None:
        self._level = min(self.capacity, self.level() + n)


@dataclass(frozen=True)
class Reservation:
    tenant: str
    reserved_tokens: int


class RateLimiter:
    """The buckets of every limited tenant; tenants without limits pass unchecked."""

    def __init__(self, limits: Mapping[str, TenantLimits], clock: Clock = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}
        for tenant, lim in limits.items():
            if lim.requests_per_s is not None:
                burst = lim.burst_requests or max(1.0, lim.requests_per_s)
                self._requests[tenant] = TokenBucket(lim.requests_per_s, burst, clock)
            if lim.tokens_per_min is not None:
                burst = lim.burst_tokens or lim.tokens_per_min
                self._tokens[tenant] = TokenBucket(lim.tokens_per_min / 60.0, burst, clock)

    def admit(self, tenant: str, reserved_tokens: int) -> Reservation:
        """Take one request and ``reserved_tokens`` from the tenant's buckets, both or neither.
        ``RateLimited`` if either lacks them; ``ValueError`` if the request needs more tokens
        than the bucket ever holds (it could never be admitted: retrying is pointless)."""
        with self._lock:
            requests, tokens = self._requests.get(tenant), self._tokens.get(tenant)
            if tokens is not None and reserved_tokens > tokens.capacity:
                raise ValueError(
                    f"this request may use {reserved_tokens} tokens (prompt + max_tokens), more "
                    f"than tenant {tenant!r}'s limit of {tokens.capacity:.0f}; lower max_tokens"
                )
            wait_s = max(
                requests.wait_s(1) if requests is not None else 0.0,
                tokens.wait_s(reserved_tokens) if tokens is not None else 0.0,
            )
            if wait_s > 0:
                raise RateLimited(wait_s, f"tenant {tenant!r} is over its rate limit")
            if requests is not None:
                requests.take(1)
            if tokens is not None:
                tokens.take(reserved_tokens)
            return Reservation(tenant, reserved_tokens if tokens is not None else 0)

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Correct the reservation to the tokens the request used: give back the rest, or
        charge the excess."""
        with self._lock:
            tokens = self._tokens.get(reservation.tenant)
            if tokens is None:
                return
            unused = reservation.reserved_tokens - used_tokens
            if unused >= 0:
                tokens.give_back(unused)
            else:
                tokens.take(-unused)
