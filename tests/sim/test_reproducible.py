"""A run is a pure function of its inputs and seed."""

from pathlib import Path

from prfaas.planner.build import build_inputs
from prfaas.planner.config import load_plan_config
from prfaas.sim.build import FleetOptions, build_setup, find_deployment
from prfaas.sim.metrics import RunResult
from prfaas.sim.simulator import RunConfig, Simulator
from prfaas.sim.workload import SyntheticWorkload

CASE = Path(__file__).parents[2] / "examples/paper/case-study.yaml"


def run(seed: int, policy: str) -> RunResult:
    inputs = build_inputs(load_plan_config(CASE), CASE.parent)
    setup = build_setup(inputs, find_deployment(inputs, "PrfaaS-PD"), policy, FleetOptions())
    workload = SyntheticWorkload(2.5, 600.0, 9.9, 1.0, 128, 131072, 1024, seed=seed)
    return Simulator(setup.fleet, setup.policy, workload, RunConfig(600.0)).run()


def test_same_seed_same_run_bit_for_bit() -> None:
    for policy in ("prfaas-static", "prfaas-adaptive", "prfaas-ttft"):
        a, b = run(7, policy), run(7, policy)
        assert a.summary == b.summary
        assert a.ttfts_s() == b.ttfts_s()
        assert a.series == b.series


def test_another_seed_another_run() -> None:
    assert run(7, "prfaas-static").ttfts_s() != run(8, "prfaas-static").ttfts_s()
