"""Token buckets per tenant on a virtual clock: the sustained rate, the burst on top of it,
both-or-neither admission, Retry-After, and the token reservation settled to actual use."""

from __future__ import annotations

import pytest

from prfaas.tenancy.limits import RateLimited, RateLimiter, TenantLimits


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def offer(limiter: RateLimiter, clock: Clock, per_s: float, duration_s: float, tokens: int) -> int:
    """Offer requests at ``per_s`` for ``duration_s``; how many were admitted (and settled
    at once to their reservation)."""
    admitted, n = 0, int(per_s * duration_s)
    for i in range(n):
        clock.now_s = i / per_s
        try:
            r = limiter.admit("a", tokens)
        except RateLimited:
            continue
        limiter.settle(r, tokens)
        admitted += 1
    return admitted


@pytest.mark.parametrize("rate", [1.0, 7.5, 100.0])
def test_requests_per_s_hold_under_a_3x_burst(rate: float) -> None:
    clock = Clock()
    limiter = RateLimiter({"a": TenantLimits(requests_per_s=rate, burst_requests=1)}, clock)
    duration_s = 60.0
    admitted = offer(limiter, clock, 3 * rate, duration_s, 1)
    # At most the burst plus the rate times the window; at least the rate within 5 %.
    assert admitted <= 1 + rate * duration_s
    assert admitted >= 0.95 * rate * duration_s


def test_tokens_per_min_hold_under_a_3x_burst() -> None:
    clock = Clock()
    limiter = RateLimiter({"a": TenantLimits(tokens_per_min=6000, burst_tokens=500)}, clock)
    admitted = offer(limiter, clock, 3 * 6000 / 60 / 50, 120.0, 50)  # 3x the rate, 50 each
    used = admitted * 50
    assert used <= 500 + 6000 * 2
    assert used >= 0.95 * 6000 * 2


def test_the_burst_is_granted_at_once_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter({"a": TenantLimits(requests_per_s=2, burst_requests=5)}, clock)
    for _ in range(5):
        limiter.admit("a", 0)
    with pytest.raises(RateLimited) as refused:
        limiter.admit("a", 0)
    assert refused.value.retry_after_s == pytest.approx(0.5)
    clock.now_s = 0.5
    limiter.admit("a", 0)


def test_admission_takes_both_buckets_or_neither() -> None:
    clock = Clock()
    limits = TenantLimits(requests_per_s=1, burst_requests=2, tokens_per_min=60, burst_tokens=10)
    limiter = RateLimiter({"a": limits}, clock)
    limiter.admit("a", 8)
    with pytest.raises(RateLimited) as refused:  # a request is left, 2 tokens are not
        limiter.admit("a", 5)
    assert refused.value.retry_after_s == pytest.approx(3.0)  # 3 tokens at 1 token/s
    limiter.admit("a", 2)  # the refusal took no request
    with pytest.raises(RateLimited):
        limiter.admit("a", 0)  # now the requests bucket is empty


def test_settle_gives_back_the_unused_reservation_and_charges_an_excess() -> None:
    clock = Clock()
    limiter = RateLimiter({"a": TenantLimits(tokens_per_min=60, burst_tokens=100)}, clock)
    r = limiter.admit("a", 100)  # prompt + max_tokens
    limiter.settle(r, 30)  # used 30: 70 back
    r = limiter.admit("a", 70)
    limiter.settle(r, 90)  # used 20 more than reserved: the bucket goes to -20
    with pytest.raises(RateLimited) as refused:
        limiter.admit("a", 10)
    assert refused.value.retry_after_s == pytest.approx(30.0)  # from -20 to 10 at 1/s


def test_a_request_larger_than_the_bucket_is_a_clear_error_not_a_retry() -> None:
    limiter = RateLimiter({"a": TenantLimits(tokens_per_min=100)}, Clock())
    with pytest.raises(ValueError, match="lower max_tokens"):
        limiter.admit("a", 101)


def test_tenants_are_independent_and_unlisted_ones_unlimited() -> None:
    clock = Clock()
    limiter = RateLimiter({"a": TenantLimits(requests_per_s=1)}, clock)
    limiter.admit("a", 0)
    with pytest.raises(RateLimited):
        limiter.admit("a", 0)
    for _ in range(1000):
        limiter.admit("b", 10**9)


@pytest.mark.parametrize(
    "kwargs",
    [{"requests_per_s": 0}, {"tokens_per_min": -1}, {"burst_requests": 2}, {"burst_tokens": 5}],
)
def test_bad_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TenantLimits(**kwargs)
