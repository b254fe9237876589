"""Abundant mode end to end: a prefix cached remotely is pulled across, then hits locally.

Two clusters joined by 8 Gbps links (1e9 B/s each way, no RTT); T(l) = l / 1000 s and
S_kv(l) = 1e6 * l bytes everywhere; 100-token blocks.
"""

import pytest

from prfaas.planner.profile import TableProfile
from prfaas.planner.throughput import DecodeSpec
from prfaas.router.policies import PrfaasThreshold
from prfaas.router.router import RouterConfig
from prfaas.router.types import RouterState
from prfaas.sim.build import prefill_cost
from prfaas.sim.request import SimRequest
from prfaas.sim.simulator import PolicySetup, RunConfig, Simulator
from prfaas.sim.topology import FleetSpec, SimClusterSpec, SimLinkSpec

PROFILE = TableProfile((1000.0, 2000.0), (1.0, 2.0), (1e9, 2e9), fit="interp")


def test_the_remote_prefix_is_pulled_and_reused() -> None:
    cost = prefill_cost(PROFILE, 8192)
    clusters = (
        SimClusterSpec("pd", "pd", 1, 1, cost, DecodeSpec(4, 0.1)),
        SimClusterSpec("remote", "prfaas", 1, 0, cost),
    )
    links = (
        SimLinkSpec("pd", "pd", 8.0),
        SimLinkSpec("remote", "pd", 8.0),
        SimLinkSpec("pd", "remote", 8.0),
    )
    fleet = FleetSpec(clusters, links, block_tokens=100, cache_capacity_blocks=100)
    policy = PolicySetup(
        "abundant", PrfaasThreshold(), RouterConfig(block_tokens=100), RouterState(1000, "abundant")
    )
    chain = tuple(range(30))
    first, second = SimRequest("a", 0.0, 3000, 2, chain), SimRequest("b", 10.0, 3000, 2, chain)
    Simulator(fleet, policy, [first, second], RunConfig(duration_s=20.0)).run()
    assert first.decision is not None and first.decision.path == "prfaas"
    assert second.decision is not None
    assert (second.decision.path, second.decision.pull_from) == ("pd-p", "remote")
    # At least one token is computed, so the last whole block can't be reused: 29 blocks.
    assert second.decision.pull_tokens == 2900
    # 2.9e9 B at 1e9 B/s: the pulled prefix lands at 12.9 s; its 29 whole blocks hit.
    assert second.prefill_start_s == pytest.approx(12.9)
    assert second.cached_tokens == 2900
    assert second.prefill_end_s == pytest.approx(12.9 + 0.1)
    assert second.finish_s > 0
