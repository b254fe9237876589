"""Length distributions and the trace prefix-hit model."""

import json
from pathlib import Path

import numpy as np
import pytest

from prfaas.planner.trace import TraceRequest, incremental_lengths, load_mooncake_trace
from prfaas.planner.workload import EmpiricalLengths, TruncatedLogNormal

MOONCAKE = Path(__file__).resolve().parents[3] / "shared/data/mooncake-traces/synthetic_trace.jsonl"


def test_truncated_lognormal_matches_numerical_integration() -> None:
    dist = TruncatedLogNormal(mu=9.9, sigma=1.0, min_tokens=128, max_tokens=131072)
    # Integrate the density on a fine log grid (trapezoid in u = ln l).
    u = np.linspace(np.log(128), np.log(131072), 200_001)
    density = np.exp(-0.5 * ((u - 9.9) / 1.0) ** 2)  # up to a constant, per du
    lengths = np.exp(u)
    mass = np.trapezoid(density, u)
    mean = np.trapezoid(density * lengths, u) / mass
    assert dist.mean_tokens == pytest.approx(mean, rel=1e-6)
    assert dist.mean_tokens == pytest.approx(27486, rel=1e-3)  # the paper's "mean ≈ 27K"
    t = 19400.0
    below = u <= np.log(t)
    p = 1 - np.trapezoid(density[below], u[below]) / mass
    l_short = np.trapezoid((density * lengths)[below], u[below]) / np.trapezoid(
        density[below], u[below]
    )
    stats = dist.tail_stats(np.array([t]))
    assert stats.offload_fraction[0] == pytest.approx(p, abs=1e-5)
    assert stats.l_short_tokens[0] == pytest.approx(l_short, rel=1e-4)
    # Law of total expectation.
    p_model = stats.offload_fraction[0]
    total = p_model * stats.l_long_tokens[0] + (1 - p_model) * stats.l_short_tokens[0]
    assert total == pytest.approx(dist.mean_tokens, rel=1e-9)


def test_tail_stats_at_the_bounds() -> None:
    dist = TruncatedLogNormal(9.9, 1.0, 128, 131072)
    stats = dist.tail_stats(np.array([128.0, 131072.0]))
    assert stats.offload_fraction[0] == pytest.approx(1.0)
    assert stats.l_long_tokens[0] == pytest.approx(dist.mean_tokens)
    assert stats.offload_fraction[1] == 0.0
    assert np.isnan(stats.l_long_tokens[1])


def test_empirical_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    sample = rng.integers(1, 5000, size=500)
    dist = EmpiricalLengths(tuple(int(x) for x in sample))
    for t in (0, 1, 250, 2500, 4999, 5000):
        stats = dist.tail_stats(np.array([float(t)]))
        long, short = sample[sample > t], sample[sample <= t]
        assert stats.offload_fraction[0] == pytest.approx(len(long) / len(sample))
        if len(long):
            assert stats.l_long_tokens[0] == pytest.approx(long.mean())
        if len(short):
            assert stats.l_short_tokens[0] == pytest.approx(short.mean())
    assert dist.mean_tokens == pytest.approx(sample.mean())


def _request(t: float, n: int, ids: list[int]) -> TraceRequest:
    return TraceRequest(t, n, 1, tuple(ids))


def test_prefix_hit_models() -> None:
    requests = [
        _request(0, 1500, [1, 2, 3]),  # 512 + 512 + 476 tokens
        _request(1, 1200, [1, 2, 9]),  # shares two blocks
        _request(2, 1024, [1, 2]),  # fully cached: still recomputes one token
        _request(3, 600, [7, 2]),  # different first block: no hit (ids chain on parents)
    ]
    assert incremental_lengths(requests, "none") == [1500, 1200, 1024, 600]
    assert incremental_lengths(requests, "unbounded", block_tokens=512) == [1500, 176, 1, 600]
    # Capacity 3: after request 1 the cache holds {3, 1, 2, 9} -> evicts 3, keeps 1, 2, 9.
    assert incremental_lengths(requests, "lru", 512, capacity_blocks=3) == [1500, 176, 1, 600]
    # Capacity 1: only the last inserted block survives, so prefixes never hit.
    assert incremental_lengths(requests, "lru", 512, capacity_blocks=1) == [1500, 1200, 1024, 600]
    with pytest.raises(ValueError, match="capacity"):
        incremental_lengths(requests, "lru")


def test_load_trace_reports_bad_line(tmp_path: Path) -> None:
    good = {"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"timestamp": 1}) + "\n")
    with pytest.raises(ValueError, match=r"t.jsonl:2"):
        load_mooncake_trace(path)


@pytest.mark.skipif(not MOONCAKE.is_file(), reason="Mooncake sample trace not present")
def test_mooncake_sample_prefix_hits_shorten_prompts() -> None:
    requests = load_mooncake_trace(MOONCAKE)
    assert len(requests) == 3993
    prompts = incremental_lengths(requests, "none")
    assert np.mean(prompts) == pytest.approx(15325, rel=0.01)  # the trace README's average
    cached = incremental_lengths(requests, "unbounded")
    assert all(1 <= c <= p for c, p in zip(cached, prompts, strict=True))
    assert np.mean(cached) == pytest.approx(5345, rel=0.01)  # measured: 5,344.9
