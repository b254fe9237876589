"""best_threshold_for_split reads the fixed-split optimum off a solved plan."""

import numpy as np
import pytest

from prfaas.planner.deployments import HomogeneousPd, PrfaasPd
from prfaas.planner.profile import TableProfile
from prfaas.planner.search import best_threshold_for_split, plan
from prfaas.planner.throughput import DecodeSpec
from prfaas.planner.workload import TruncatedLogNormal

FAST = TableProfile((1000.0, 20000.0, 60000.0), (0.2, 1.5, 6.0), (1e8, 5e8, 13e8), degree=2)
SLOW = TableProfile((1000.0, 20000.0, 60000.0), (0.5, 4.0, 15.0), (1e8, 5e8, 13e8), degree=2)
DECODE = DecodeSpec(max_batch_size=16, step_s=0.02)
WORKLOAD = TruncatedLogNormal(9.0, 1.0, 128, 60000)


def test_the_optimal_split_gives_the_plan_threshold() -> None:
    result = plan(PrfaasPd("x", 2, FAST, 6, SLOW, DECODE, 100.0), WORKLOAD, 500, 100)
    assert result.n_p is not None and result.threshold_tokens is not None
    t, lam = best_threshold_for_split(result, result.n_p)
    assert t == result.threshold_tokens
    assert lam == pytest.approx(result.throughput_rps)


def test_other_splits_are_row_maxima_and_no_better() -> None:
    result = plan(PrfaasPd("x", 2, FAST, 6, SLOW, DECODE, 100.0), WORKLOAD, 500, 100)
    assert result.curves is not None
    for n_p in result.curves.n_p_values:
        t, lam = best_threshold_for_split(result, n_p)
        row = result.curves.throughput_rps[result.curves.n_p_values.index(n_p)]
        assert lam == pytest.approx(float(np.max(row)))
        assert lam <= result.throughput_rps + 1e-12
        assert WORKLOAD.min_tokens <= t <= WORKLOAD.max_tokens


def test_a_narrower_link_raises_the_threshold() -> None:
    wide = plan(PrfaasPd("x", 2, FAST, 6, SLOW, DECODE, 100.0), WORKLOAD, 500, 100)
    narrow = plan(PrfaasPd("x", 2, FAST, 6, SLOW, DECODE, 0.5), WORKLOAD, 500, 100)
    assert best_threshold_for_split(narrow, 3)[0] > best_threshold_for_split(wide, 3)[0]


def test_rejects_plans_without_a_threshold_and_unknown_splits() -> None:
    homog = plan(HomogeneousPd("h", 6, SLOW, DECODE), WORKLOAD, 500)
    with pytest.raises(ValueError, match="PrfaaS-PD"):
        best_threshold_for_split(homog, 3)
    result = plan(PrfaasPd("x", 2, FAST, 6, SLOW, DECODE, 100.0), WORKLOAD, 500, 100)
    with pytest.raises(ValueError, match="not in the searched splits"):
        best_threshold_for_split(result, 9)
