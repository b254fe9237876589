"""Role conversion: drain, switch after the drain time, new epoch; no request is lost."""

from pathlib import Path

from prfaas.planner.build import build_inputs
from prfaas.planner.config import load_plan_config
from prfaas.sim.build import FleetOptions, build_setup, find_deployment
from prfaas.sim.simulator import RunConfig, Simulator
from prfaas.sim.workload import Drift, SyntheticWorkload

CASE = Path(__file__).parents[2] / "examples/paper/case-study.yaml"


def test_fleet_convert_gives_a_new_epoch_and_forgets_the_cache() -> None:
    inputs = build_inputs(load_plan_config(CASE), CASE.parent)
    setup = build_setup(inputs, find_deployment(inputs, "PrfaaS-PD"), None, FleetOptions())
    sim = Simulator(setup.fleet, setup.policy, [], RunConfig(10.0))
    sim.kv_index.stored("pd-p0", 0, [1, 2])
    assert sim.kv_index.prefix_blocks([1, 2]) == {"pd-p0": 2}
    converted = sim.fleet.convert("pd-p0")
    assert converted.role == "decode"
    assert sim.kv_index.prefix_blocks([1, 2]) == {}
    sim.kv_index.stored("pd-p0", 0, [1])  # late event of the old role: ignored
    assert sim.kv_index.prefix_blocks([1]) == {}


def test_adaptive_conversions_under_drift_lose_no_request() -> None:
    inputs = build_inputs(load_plan_config(CASE), CASE.parent)
    options = FleetOptions()
    setup = build_setup(inputs, find_deployment(inputs, "PrfaaS-PD"), "prfaas-adaptive", options)
    workload = SyntheticWorkload(
        1.8, 1800.0, 9.9, 1.0, 128, 131072, 1024, drift=Drift(0.0, 600.0, 10.5), seed=2
    )
    config = RunConfig(1800.0, drain_limit_s=3600.0, role_switch_drain_s=30.0)
    sim = Simulator(setup.fleet, setup.policy, workload, config)
    result = sim.run()
    changes = result.summary["role_changes"]
    assert changes and all(to == "prefill" for _, _, to in changes)
    assert result.summary["requests"] == result.summary["completed"]
    prefill = [i for i in sim.fleet.by_name.values() if i.cluster == "pd" and i.role == "prefill"]
    assert len(prefill) == 3 + len(changes)
    # switched instances took work after the switch
    switched = {name for _, name, _ in changes}
    assert all(i.busy_s > 0 for i in prefill if i.name in switched)
