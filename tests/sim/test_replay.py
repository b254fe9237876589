"""A recorded run replayed through the simulator (``sim/replay.py``): the replay drives the
controller it is given, on the link it measures; ``compare`` is the agreement figure of
``benchmarks/link_dip.py``. The live run itself is ``tests/serving/test_link_dip.py``."""

from pathlib import Path

import pytest

from prfaas.planner.build import build_inputs
from prfaas.planner.config import load_plan_config
from prfaas.planner.deployments import PrfaasPd
from prfaas.planner.search import plan
from prfaas.router.control import ControlConfig, Controller, OperatingPoint
from prfaas.sim.replay import ControlSample, LiveScenario, RecordedRequest, compare, replay
from prfaas.sim.workload import SyntheticWorkload

CASE = Path(__file__).parents[2] / "examples/paper/case-study.yaml"
DIP_S, RESTORE_S, DURATION_S = 200.0, 400.0, 600.0


def scenario() -> LiveScenario:
    """The case study at 1.6 req/s, its 100 Gbps link down to 5 Gbps for 200 s."""
    inputs = build_inputs(load_plan_config(CASE), CASE.parent)
    deployment = inputs.deployments[0]
    assert isinstance(deployment, PrfaasPd)
    n_p = plan(deployment, inputs.workload, inputs.output_tokens, inputs.threshold_step_tokens).n_p
    assert n_p is not None
    controller = Controller(
        ControlConfig(),
        deployment,
        inputs.workload,
        inputs.output_tokens,
        "pd",
        "prfaas",
        OperatingPoint(n_p=n_p),
    )
    traffic = SyntheticWorkload(1.6, DURATION_S, 9.9, 1.0, 128, 131072, 1024)
    return LiveScenario(
        deployment=deployment,
        n_p=n_p,
        controller=controller,
        requests=tuple(RecordedRequest(r.arrival_s, r.prompt_len, r.output_len) for r in traffic),
        link_schedule=((DIP_S, 5.0), (RESTORE_S, 100.0)),
        block_tokens=512,
        max_batch_tokens=8192,
        pipeline_layers=32,
        balance_factor=1.25,
        rtt_ms=20.0,
    )


def test_the_replayed_controller_sees_the_dip_through_its_measure() -> None:
    s = scenario()
    t0 = s.controller.state.threshold_tokens
    trace = replay(s, DURATION_S)
    assert s.controller.state.threshold_tokens == t0  # the replay drove a copy
    assert [round(x.time_s) for x in trace[:3]] == [1, 2, 3]  # one sample per short tick
    during = [x for x in trace if DIP_S <= x.time_s < RESTORE_S]
    noticed = next(x.time_s for x in during if x.capacity_gbps < 10.0)
    assert noticed - DIP_S <= 5.0
    assert max(x.threshold_tokens for x in during) > 1.2 * t0  # the dip raised t
    before = [x.capacity_gbps for x in trace if x.time_s < DIP_S]
    assert min(before) > 10.0  # a link with room is never measured at the dipped rate
    end = trace[-1]
    assert end.capacity_gbps > 10.0 and end.threshold_tokens < max(
        x.threshold_tokens for x in during
    )


def test_compare_is_the_mean_relative_difference_at_the_live_samples() -> None:
    live = [ControlSample(0.5, 1.0, 100.0), ControlSample(1.5, 1.0, 100.0)]
    live += [ControlSample(2.5, 1.0, 110.0), ControlSample(3.5, 1.0, 200.0)]
    simulated = [ControlSample(1.0, 1.0, 100.0), ControlSample(2.0, 1.0, 121.0)]
    a = compare(live, simulated)
    # 0.5 s precedes the first simulated tick (left out); 1.5 s: 0; 2.5 s: 121 vs 110,
    # 10%; 3.5 s: 121 vs 200, 39.5%.
    assert a.samples == 3
    assert a.mean_relative == pytest.approx((0 + 0.1 + 0.395) / 3)
    assert a.max_relative == pytest.approx(0.395)
    assert a.within_20_percent == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        compare(live[:1], simulated)
