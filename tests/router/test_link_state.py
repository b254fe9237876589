"""``measured_link``: the controller's view of a link from its senders' measures, and what
the controller does with a stalled one (``adapt_mode`` must not open abundant mode)."""

from __future__ import annotations

import pytest

from prfaas.router.link_state import LinkSample, measured_link
from prfaas.router.types import LinkView


def test_no_measure_means_the_configured_cap() -> None:
    view = measured_link("remote", "local", 1.0, [LinkSample(0.1, None, 0.0)])
    assert (view.capacity_gbps, view.utilization) == (1.0, pytest.approx(0.1))


def test_measured_capacities_add_up_within_the_cap() -> None:
    senders = [LinkSample(0.02, 0.03, 1.0), LinkSample(0.02, 0.02, 0.5)]
    view = measured_link("remote", "local", 1.0, senders)
    assert view.capacity_gbps == pytest.approx(0.05)
    assert view.utilization == 1.0  # a sender was backlogged the whole window
    big = measured_link("remote", "local", 1.0, [LinkSample(0.9, 3.0, 1.0)])
    assert big.capacity_gbps == 1.0


def test_a_stalled_link_reads_as_congested() -> None:
    view = measured_link("remote", "local", 1.0, [LinkSample(0.0, 0.0, 1.0)])
    assert view.capacity_gbps == 0.0 and view.utilization == 1.0
    idle = measured_link("remote", "local", 1.0, [LinkSample(0.0, None, 0.0)])
    assert idle.utilization == 0.0


def test_adapt_mode_never_opens_abundant_mode_over_a_stalled_link() -> None:
    """The case study's controller, fed a link that stalled (the senders backlogged, no
    bytes moving): scarce mode, t up. Fed the old view (rate over the cap) it would read
    0% utilization and switch to abundant mode, pulling caches over the broken link."""
    from tests.router.test_control import controller, fleet

    c = controller()
    t0 = c.state.threshold_tokens
    stalled = measured_link("remote", "pd", 100.0, [LinkSample(0.0, 0.0, 1.0)])
    for _ in range(5):
        state = c.short_tick(fleet(), stalled)
    assert state.mode == "scarce"
    assert state.threshold_tokens > t0
    naive = controller().short_tick(fleet(), LinkView("remote", "pd", 100.0, 0.0, 0.0))
    assert naive.mode == "abundant"
