"""A two-request scenario small enough to compute every time by hand.

One PD cluster: 1 prefill instance with T(l) = l / 1000 s and S_kv(l) = 1e6 * l bytes,
1 decode instance (BS_max 4, 0.1 s steps), a local link of 8 Gbps (1e9 B/s), KV shipped in
4 layers (3/4 of it can flow while the prefill runs). See the comments for each number.
"""

import pytest

from prfaas.planner.profile import TableProfile
from prfaas.planner.throughput import DecodeSpec
from prfaas.router.policies import HomogeneousPolicy
from prfaas.router.router import RouterConfig
from prfaas.router.types import RouterState
from prfaas.sim.build import prefill_cost
from prfaas.sim.request import SimRequest
from prfaas.sim.simulator import PolicySetup, RunConfig, Simulator
from prfaas.sim.topology import FleetSpec, SimClusterSpec, SimLinkSpec

PROFILE = TableProfile((1000.0, 2000.0), (1.0, 2.0), (1e9, 2e9), fit="interp")


def run(requests: list[SimRequest]) -> Simulator:
    cluster = SimClusterSpec("pd", "pd", 1, 1, prefill_cost(PROFILE, 4096), DecodeSpec(4, 0.1))
    fleet = FleetSpec(
        (cluster,), (SimLinkSpec("pd", "pd", 8.0),), max_batch_tokens=1000, pipeline_layers=4
    )
    policy = PolicySetup(
        "homogeneous", HomogeneousPolicy(), RouterConfig(block_tokens=16), RouterState(float("inf"))
    )
    sim = Simulator(fleet, policy, requests, RunConfig(duration_s=10.0, sample_interval_s=1.0))
    sim.run()
    return sim


def test_single_request() -> None:
    r = SimRequest("a", 0.0, 1000, 10)
    run([r])
    assert r.prefill_end_s == pytest.approx(1.0)  # 1000 tokens / 1000 tokens/s
    # 0.75e9 B flow during the prefill (cap 0.75e9 B/s), the last 0.25e9 B at 1e9 B/s.
    assert r.kv_landed_s == pytest.approx(1.25)
    assert r.ttft_s == pytest.approx(1.4)  # joins at the 1.3 s step boundary, +1 step
    assert r.finish_s == pytest.approx(2.3)  # 10 steps from 1.3 s


def test_second_request_queues_and_shares_the_link() -> None:
    a, b = SimRequest("a", 0.0, 1000, 10), SimRequest("b", 0.5, 1000, 10)
    run([a, b])
    assert b.prefill_start_s == pytest.approx(1.0)  # waits for a's batch
    # From 1.0 s: a (uncapped, 0.25e9 B left) and b (cap 0.75e9) split 1e9 B/s evenly.
    assert a.kv_landed_s == pytest.approx(1.5)
    assert a.ttft_s == pytest.approx(1.6)
    # b: 0.25e9 B by 1.5 s, 0.375e9 B more by 2.0 s at its cap, 0.375e9 B at 1e9 B/s.
    assert b.kv_landed_s == pytest.approx(2.375)
    assert b.ttft_s == pytest.approx(2.5 - 0.5)
