"""Fair sharing arithmetic, caps (pipelining), capacity changes and RTT-free completion."""

import pytest

from prfaas.sim.link import Flow, SimLink, water_fill

GB = 1e9


def test_water_fill_gives_capped_flows_their_cap_and_splits_the_rest() -> None:
    assert water_fill(10.0, [None, 2.0, None]) == [4.0, 2.0, 4.0]
    assert water_fill(10.0, [1.0, 1.0]) == [1.0, 1.0]
    assert water_fill(9.0, [None, None, None]) == [3.0, 3.0, 3.0]
    assert water_fill(10.0, [0.0, None]) == [0.0, 10.0]
    assert water_fill(10.0, []) == []


def run_until_idle(link: SimLink, next_s: float | None) -> dict[int, float]:
    done_at: dict[int, float] = {}
    while next_s is not None:
        flows, next_s = link.complete(next_s)
        for f in flows:
            done_at[int(f.total_bytes)] = link._last_s
    return done_at


def test_two_flows_share_then_the_survivor_speeds_up() -> None:
    link = SimLink("a->b", "a", "b", capacity_gbps=8.0, rtt_ms=0.0)  # 1 GB/s
    noop = lambda t: None  # noqa: E731
    link.add(Flow(1 * GB, noop), 0.0)
    next_s = link.add(Flow(3 * GB, noop), 0.0)
    assert next_s == pytest.approx(2.0)  # 0.5 GB/s each: the 1 GB flow ends at 2 s
    done = run_until_idle(link, next_s)
    assert done[int(GB)] == pytest.approx(2.0)
    assert done[int(3 * GB)] == pytest.approx(4.0)  # 1 GB by 2 s, then 2 GB at 1 GB/s
    assert link.bytes_sent == pytest.approx(4 * GB)


def test_a_capacity_dip_slows_a_flow_exactly() -> None:
    link = SimLink("a->b", "a", "b", capacity_gbps=8.0, rtt_ms=0.0)
    link.add(Flow(2 * GB, lambda t: None), 0.0)
    link.set_capacity(0.8, 1.0)  # 1 GB sent; the rest at 0.1 GB/s
    next_s = link.set_capacity(8.0, 6.0)  # 0.5 GB more by 6 s; 0.5 GB left at 1 GB/s
    assert next_s == pytest.approx(6.5)


def test_a_capped_flow_speeds_up_when_its_cap_lifts() -> None:
    link = SimLink("a->b", "a", "b", capacity_gbps=8.0, rtt_ms=0.0)
    flow = Flow(1 * GB, lambda t: None, cap_bytes_per_s=0.25 * GB)
    assert link.add(flow, 0.0) == pytest.approx(4.0)
    assert link.lift_cap(flow, 2.0) == pytest.approx(2.5)  # 0.5 GB left at 1 GB/s


def test_an_outage_stalls_flows_until_capacity_returns() -> None:
    link = SimLink("a->b", "a", "b", capacity_gbps=8.0, rtt_ms=0.0)
    link.add(Flow(1 * GB, lambda t: None), 0.0)
    assert link.set_capacity(0.0, 0.5) is None
    assert link.set_capacity(8.0, 10.0) == pytest.approx(10.5)
