"""The dual-timescale controller on the paper's case study."""

from pathlib import Path

import numpy as np
import pytest

from prfaas.planner.build import build_inputs
from prfaas.planner.config import load_plan_config
from prfaas.planner.deployments import PrfaasPd
from prfaas.router.control import ControlConfig, Controller, OperatingPoint
from prfaas.router.types import InstanceView, LinkView

CASE = Path(__file__).parents[2] / "examples/paper/case-study.yaml"


def controller() -> Controller:
    inputs = build_inputs(load_plan_config(CASE), CASE.parent)
    deployment = inputs.deployments[0]
    assert isinstance(deployment, PrfaasPd)
    return Controller(ControlConfig(), deployment, inputs.workload, 1024, "pd", "remote")


def fleet(remote_tokens: int = 0, local_tokens: int = 0) -> list[InstanceView]:
    views = [
        InstanceView(f"r{k}", "remote", "prefill", queued_tokens=remote_tokens) for k in range(4)
    ]
    views += [InstanceView(f"p{k}", "pd", "prefill", queued_tokens=local_tokens) for k in range(3)]
    views += [InstanceView(f"d{k}", "pd", "decode", load=k) for k in range(5)]
    return views


def link(capacity: float = 100.0, utilization: float = 0.1) -> LinkView:
    return LinkView("remote", "pd", capacity, capacity * utilization, utilization)


def test_starts_at_the_planner_optimum() -> None:
    c = controller()
    assert c.n_p == 3
    assert c.state.threshold_tokens == pytest.approx(19_378, abs=250)


def test_mode_has_hysteresis() -> None:
    c = controller()
    assert c.short_tick(fleet(), link(utilization=0.3)).mode == "abundant"
    assert c.short_tick(fleet(), link(utilization=0.6)).mode == "abundant"
    assert c.short_tick(fleet(), link(utilization=0.8)).mode == "scarce"
    assert c.short_tick(fleet(), link(utilization=0.5)).mode == "scarce"


def test_a_bandwidth_drop_re_solves_the_threshold_upward() -> None:
    c = controller()
    before = c.t_plan
    c.short_tick(fleet(), link(capacity=5.0))
    assert c.t_plan > 1.5 * before  # the planner's own answer at 5 Gbps is ~32K


def test_queue_imbalance_nudges_t_within_bounds() -> None:
    c = controller()
    t0 = c.state.threshold_tokens
    assert c.short_tick(fleet(remote_tokens=400_000), link()).threshold_tokens > t0
    for _ in range(200):
        c.short_tick(fleet(local_tokens=400_000), link())
    assert c.state.threshold_tokens == pytest.approx(c.t_plan / 2)
    for _ in range(200):
        c.short_tick(fleet(), link(utilization=0.99))  # saturated link raises t
    assert c.state.threshold_tokens == pytest.approx(c.t_plan * 2)


def test_long_tick_converts_decode_to_prefill_when_prompts_grow_and_pd_p_queues() -> None:
    c = controller()
    rng = np.random.default_rng(0)
    lengths = np.exp(rng.normal(10.5, 1.0, 4000))
    lengths = lengths[(lengths >= 128) & (lengths <= 131072)].astype(int).tolist()
    t0 = c.state.threshold_tokens
    # Nothing queued: the planner gains capacity, but nothing asks for it.
    assert c.long_tick(fleet(), lengths) == (c.state, [])
    assert c.n_p == 3 and c.state.threshold_tokens == t0
    state, changes = c.long_tick(fleet(local_tokens=400_000), lengths)
    assert changes and all(ch.to_role == "prefill" for ch in changes)
    assert changes[0].instance == "d0"  # least loaded first
    assert c.n_p == 3 + len(changes)
    assert state.threshold_tokens > 25_000
    assert c.long_tick(fleet(), lengths[:10]) == (c.state, [])  # too few samples: no change


def controller_at(start: OperatingPoint, **config: object) -> Controller:
    inputs = build_inputs(load_plan_config(CASE), CASE.parent)
    deployment = inputs.deployments[0]
    assert isinstance(deployment, PrfaasPd)
    return Controller(
        ControlConfig(**config),  # type: ignore[arg-type]
        deployment,
        inputs.workload,
        1024,
        "pd",
        "remote",
        start,
    )


def grown_lengths() -> list[int]:
    rng = np.random.default_rng(0)
    lengths = np.exp(rng.normal(10.5, 1.0, 4000))
    return lengths[(lengths >= 128) & (lengths <= 131072)].astype(int).tolist()


def test_t_stays_within_the_operating_points_bounds() -> None:
    c = controller_at(OperatingPoint(bounds=(10_000.0, 20_000.0)))
    for _ in range(200):
        c.short_tick(fleet(remote_tokens=400_000), link())  # pushes t up
    assert c.state.threshold_tokens == 20_000.0
    for _ in range(400):
        c.short_tick(fleet(local_tokens=400_000), link())  # and down
    assert c.state.threshold_tokens == 10_000.0
    state, _ = c.long_tick(fleet(local_tokens=400_000), grown_lengths())  # the planner: > 25K
    assert state.threshold_tokens == 20_000.0 and c.t_plan == 20_000.0 and c.t_solved > 25_000


def test_a_pinned_t_never_moves_and_no_role_change_is_proposed() -> None:
    c = controller_at(OperatingPoint(pinned_tokens=5_000.0))
    assert c.state.threshold_tokens == 5_000.0
    for _ in range(50):
        assert c.short_tick(fleet(remote_tokens=400_000), link()).threshold_tokens == 5_000.0
    assert c.long_tick(fleet(), grown_lengths()) == (c.state, []) and c.n_p == 3


def test_without_adapt_mode_the_configured_mode_holds() -> None:
    c = controller_at(OperatingPoint(mode="abundant"), adapt_mode=False)
    assert c.short_tick(fleet(), link(utilization=0.99)).mode == "abundant"
    adaptive = controller_at(OperatingPoint(mode="abundant"))
    assert adaptive.short_tick(fleet(), link(utilization=0.99)).mode == "scarce"


def test_egress_is_smoothed_by_the_controller() -> None:
    c = controller_at(OperatingPoint(mode="abundant"), egress_smoothing=0.5)
    raw = controller_at(OperatingPoint(mode="abundant"))
    assert raw.short_tick(fleet(), link(utilization=0.8)).mode == "scarce"
    assert c.short_tick(fleet(), link(utilization=0.8)).mode == "abundant"  # one burst
    assert c.egress.utilization == pytest.approx(0.4)  # half of the first sample
    assert c.short_tick(fleet(), link(utilization=0.8)).mode == "abundant"
    assert c.egress.utilization == pytest.approx(0.6)
    assert c.egress.goodput_gbps == pytest.approx(0.6 * 100.0)
    c.short_tick(fleet(), link(utilization=0.8))
    assert c.short_tick(fleet(), link(utilization=0.8)).mode == "scarce"  # 0.75: sustained


def test_a_role_change_not_applied_goes_back_to_the_split() -> None:
    c = controller()
    _, changes = c.long_tick(fleet(local_tokens=400_000), grown_lengths())
    assert changes
    for change in changes:
        c.not_applied(change)
    assert c.n_p == 3


def test_decode_is_given_back_only_when_its_slots_are_full() -> None:
    c = controller_at(OperatingPoint(n_p=6))  # the planner's best is 3 / 5
    rng = np.random.default_rng(0)
    lengths = np.exp(rng.normal(9.9, 1.0, 4000))
    lengths = lengths[(lengths >= 128) & (lengths <= 131072)].astype(int).tolist()
    prefill = [InstanceView(f"p{k}", "pd", "prefill") for k in range(6)]
    idle = [InstanceView(f"d{k}", "pd", "decode", load=3) for k in range(2)]
    busy = [InstanceView(f"d{k}", "pd", "decode", load=20) for k in range(2)]
    assert c.long_tick(prefill + idle, lengths)[1] == []
    _, changes = c.long_tick(prefill + busy, lengths)
    assert changes and all(ch.to_role == "decode" for ch in changes)


def test_states_carry_the_measured_path_costs() -> None:
    c = controller()
    state = c.short_tick(fleet(remote_tokens=400_000), link(utilization=0.5))
    assert state.costs is not None
    assert state.costs.wait_s["remote"] > 0 and state.costs.wait_s["pd"] == 0
    half = state.costs.pull_s_per_token
    assert c.short_tick(fleet(), link(utilization=0.75)).costs.pull_s_per_token == (  # type: ignore[union-attr]
        pytest.approx(2 * half)
    )
    assert c.short_tick(fleet(), link(utilization=1.0)).costs.pull_s_per_token == float("inf")  # type: ignore[union-attr]


def case_lengths() -> list[int]:
    """The case study's own lengths (log-normal, mu 9.9): the planner's split there is 3 / 5."""
    rng = np.random.default_rng(0)
    lengths = np.exp(rng.normal(9.9, 1.0, 4000))
    return lengths[(lengths >= 128) & (lengths <= 131072)].astype(int).tolist()


def test_a_link_dip_takes_decode_instances_and_gives_them_back_without_queues() -> None:
    c = controller()
    assert c.long_tick(fleet(), case_lengths())[1] == []  # 100 Gbps, no queue: nothing
    c.short_tick(fleet(), link(capacity=5.0, utilization=1.0))
    _, changes = c.long_tick(fleet(), case_lengths())  # no PD-P queue yet: the dip asks
    assert changes and all(ch.to_role == "prefill" for ch in changes)
    assert c.n_p > 3
    converted = {ch.instance for ch in changes}
    now = [
        InstanceView(v.name, v.cluster, "prefill") if v.name in converted else v for v in fleet()
    ]
    c.short_tick(now, link(capacity=100.0, utilization=0.1))  # the link is back
    _, back = c.long_tick(now, case_lengths())  # decode slots far from full: still given back
    assert back and all(ch.to_role == "decode" for ch in back)
    assert c.n_p == 3


def test_abundant_idle_prfaas_relaxes_t_below_t_plan() -> None:
    c = controller_at(OperatingPoint(), abundant_t_factor=0.8)
    for _ in range(100):
        c.short_tick(fleet(), link(utilization=0.1))  # abundant, nothing queued
    assert c.state.threshold_tokens == pytest.approx(0.8 * c.t_plan, rel=1e-3)
    for _ in range(100):  # PrfaaS queued 8 s, PD-P 7 s (no nudge): back to t_plan
        c.short_tick(fleet(remote_tokens=150_000, local_tokens=40_000), link(utilization=0.1))
    assert c.state.threshold_tokens == pytest.approx(c.t_plan, rel=1e-3)
    for _ in range(100):
        c.short_tick(fleet(), link(utilization=0.1))
    for _ in range(100):  # scarce: t_plan
        c.short_tick(fleet(), link(utilization=0.8))
    assert c.state.threshold_tokens == pytest.approx(c.t_plan, rel=1e-3)
    with pytest.raises(ValueError, match="abundant_t_factor"):
        ControlConfig(abundant_t_factor=0.0)
