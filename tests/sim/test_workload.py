"""Workloads: seeded Poisson counts, bursts, drift, truncation, trace replay."""

import statistics

from prfaas.planner.trace import TraceRequest
from prfaas.sim.workload import Burst, Drift, SyntheticWorkload, TraceWorkload


def base(**kw: object) -> SyntheticWorkload:
    args: dict[str, object] = dict(
        rate_rps=2.0,
        duration_s=2000.0,
        mu=9.9,
        sigma=1.0,
        min_tokens=128,
        max_tokens=131072,
        output_tokens=16,
        seed=1,
    )
    args.update(kw)
    return SyntheticWorkload(**args)  # type: ignore[arg-type]


def test_poisson_count_lengths_and_order() -> None:
    reqs = list(base())
    assert 3700 < len(reqs) < 4300  # 4000 expected; ±5 sigma
    times = [r.arrival_s for r in reqs]
    assert times == sorted(times) and times[-1] < 2000
    assert all(128 <= r.prompt_len <= 131072 for r in reqs)
    assert [r.arrival_s for r in base()] == times  # seeded


def test_a_burst_doubles_arrivals_inside_its_window_only() -> None:
    reqs = list(base(bursts=(Burst(1000.0, 1500.0, 3.0),)))
    inside = sum(1 for r in reqs if 1000 <= r.arrival_s < 1500)
    before = sum(1 for r in reqs if 500 <= r.arrival_s < 1000)
    assert 2.4 < inside / before < 3.6


def test_drift_moves_the_lengths_up() -> None:
    w = base(drift=Drift(0.0, 1000.0, 10.5), duration_s=3000.0)
    assert w.mu_at(500.0) == (9.9 + 10.5) / 2
    reqs = list(w)
    early = statistics.median(r.prompt_len for r in reqs if r.arrival_s < 300)
    late = statistics.median(r.prompt_len for r in reqs if r.arrival_s > 1000)
    assert late > 1.4 * early  # e^0.6 ≈ 1.8 for the untruncated median


def test_trace_replay_sorted_scaled_and_cut() -> None:
    trace = [
        TraceRequest(2000.0, 100, 5, (1, 2)),
        TraceRequest(0.0, 50, 0, ()),
        TraceRequest(9000.0, 10, 1, ()),
    ]
    reqs = list(TraceWorkload(trace, speedup=2.0, duration_s=4.0))
    assert [(r.arrival_s, r.prompt_len, r.output_len) for r in reqs] == [
        (0.0, 50, 1),
        (1.0, 100, 5),
    ]
    assert reqs[1].hash_ids == (1, 2)
