"""The sender's capacity estimate (``transfer/capacity.py``), on a scripted clock, and the
``LinkMonitor`` that feeds it on the real one."""

from __future__ import annotations

import time

import pytest

from prfaas.transfer.capacity import CapacityEstimator
from prfaas.transfer.monitor import LinkMonitor

GBIT = 1e9 / 8  # bytes per second at 1 Gbit/s


def run(
    est: CapacityEstimator,
    start_s: float,
    end_s: float,
    rate_gbps: float,
    sent: float,
    backlogged: bool = True,
    step_s: float = 0.01,
) -> float:
    """Feed the estimator ``rate_gbps`` of wire bytes from ``start_s`` to ``end_s``."""
    t = start_s
    est.update(t, sent, backlogged)  # the state from now on
    while t < end_s - 1e-9:
        t += step_s
        sent += rate_gbps * GBIT * step_s
        est.update(t, sent, backlogged)
    return sent


def test_backlogged_goodput_is_the_capacity_and_a_dip_shows_within_seconds() -> None:
    est = CapacityEstimator()
    sent = run(est, 0.0, 5.0, 1.0, 0.0)
    assert est.estimate(5.0, 1.0).capacity_gbps == pytest.approx(1.0, rel=0.02)
    assert est.estimate(5.0, 1.0).busy_fraction == pytest.approx(1.0, abs=0.01)
    # The link drops to 50 Mbit/s: within 2.5 s (one window) the estimate reads it.
    sent = run(est, 5.0, 7.5, 0.05, sent)
    assert est.estimate(7.5, 1.0).capacity_gbps == pytest.approx(0.05, rel=0.05)
    run(est, 7.5, 10.0, 1.0, sent)  # restored
    assert est.estimate(10.0, 1.0).capacity_gbps == pytest.approx(1.0, rel=0.05)


def test_the_estimate_never_exceeds_the_cap() -> None:
    est = CapacityEstimator()
    run(est, 0.0, 3.0, 2.0, 0.0)  # bursts into socket buffers read faster than the cap
    assert est.estimate(3.0, 1.0).capacity_gbps == 1.0
    assert est.estimate(3.0, None).capacity_gbps == pytest.approx(2.0, rel=0.02)


def test_idle_time_says_nothing_and_an_old_measure_expires() -> None:
    est = CapacityEstimator(hold_s=10.0)
    sent = run(est, 0.0, 1.0, 0.2, 0.0)
    # A compute-bound sender: bytes trickle out, nothing waits: not a slow link.
    sent = run(est, 1.0, 5.0, 0.001, sent, backlogged=False)
    estimate = est.estimate(5.0, 1.0)
    assert estimate.capacity_gbps == pytest.approx(0.2, rel=0.05)  # held from when it was busy
    assert estimate.busy_fraction < 0.05
    run(est, 5.0, 14.0, 0.0, sent, backlogged=False)  # the busy second left the window at 3 s
    assert est.estimate(14.0, 1.0).capacity_gbps is None  # unknown: the reader uses the cap


def test_a_stalled_link_is_congested_never_idle() -> None:
    est = CapacityEstimator()
    sent = run(est, 0.0, 2.0, 1.0, 0.0)
    run(est, 2.0, 5.0, 0.0, sent)  # a backlog, and nothing moves
    estimate = est.estimate(5.0, 1.0)
    assert estimate.capacity_gbps == 0.0
    assert estimate.busy_fraction == pytest.approx(1.0, abs=0.01)


def test_the_monitor_reports_a_stall_as_busy_with_no_capacity() -> None:
    """Real clock: a transfer queued KV bytes and its writer is stuck (no grant leaves)."""
    monitor = LinkMonitor("remote->local")
    monitor.record_opened()
    monitor.record_backlog(1 << 20)
    time.sleep(0.3)
    stats = monitor.stats(1.0)
    assert stats.capacity_gbps == 0.0
    assert stats.busy_fraction > 0.9
    assert stats.goodput_gbps == 0.0  # the window rate alone would read as an idle link
