"""The Mooncake trace through the simulator (skipped where the shared trace is absent)."""

from pathlib import Path

import pytest

from prfaas.sim.config import load_sim_config, settings
from prfaas.sim.runner import SimContext, run_one

ROOT = Path(__file__).parents[2]
TRACE = ROOT.parent / "shared/data/mooncake-traces/synthetic_trace.jsonl"

pytestmark = pytest.mark.skipif(not TRACE.exists(), reason="shared Mooncake trace not present")


def test_cache_aware_routing_hits_more_than_cache_blind() -> None:
    loaded = load_sim_config(ROOT / "examples/paper/scenarios.yaml")
    scenario = loaded.scenarios["trace"]
    s = settings(loaded.defaults, {**scenario.settings, "duration_s": 300.0}, "test")
    ctx = SimContext.load(loaded.plan_path).for_trace(TRACE, s)
    rates = {}
    for policy in ("prfaas-cache-blind", "prfaas-static"):
        result = run_one(ctx, "PrfaaS-PD", policy, None, s, scenario)
        assert result.summary["requests"] == result.summary["completed"] > 500
        rates[policy] = result.summary["cache_hit_rate"]
    assert rates["prfaas-static"] > rates["prfaas-cache-blind"] + 0.05
