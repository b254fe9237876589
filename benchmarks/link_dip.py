"""The live link dip against the simulator: the same scenario through the same ``Controller``.

Live: the deployment of ``tests/serving/test_link_dip.py`` (real workers on a tiny
checkpoint with a heavy KV, one PD-P, one decode and two PrfaaS prefill instances, the
PrfaaS -> PD link through the emulator at 1 Gbit/s), three clients sending prompts of 50 to
499 tokens; the emulator's rate drops to 50 Mbit/s, then comes back. The controller's link
capacity and t are sampled every 0.5 s.

Simulated (``prfaas.sim.replay``): the same deployment shape with the profiles start-up
profiling measured, the same requests at the same times, the same rate steps, and a copy
of the live controller as traffic began.

Agreement: at each live sample, |t_sim - t_live| / t_live with t_sim the simulated
controller's t at that time; the mean over the samples (they are evenly spaced: a
time-weighted mean), the largest, and the share within 20%.

    .venv/bin/python benchmarks/link_dip.py [--steady 12] [--dip 15] [--after 15] [--json]
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest
from tests.serving.conftest import CLUSTER_TOKEN
from tests.serving.test_control_loop import Gateway
from tests.serving.test_link_dip import (
    KV_HEADS,
    checkpoint,
    config,
    live_samples,
    live_scenario,
    run_dip,
)

from prfaas.sim.replay import compare, replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steady", type=float, default=12.0, help="seconds at 1 Gbit/s first")
    parser.add_argument("--dip", type=float, default=15.0, help="seconds at 50 Mbit/s")
    parser.add_argument("--after", type=float, default=15.0, help="seconds restored")
    parser.add_argument("--kv-heads", type=int, default=KV_HEADS, help="KV per token: 1 KiB each")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir, pytest.MonkeyPatch.context() as env:
        tmp = Path(tmp_dir)
        model = checkpoint(tmp / "model", args.kv_heads)
        env.setenv("PRFAAS_CLUSTER_TOKEN", CLUSTER_TOKEN)
        env.setenv("PRFAAS_CACHE_DIR", str(tmp / "cache"))
        gw = Gateway(config(model), tmp / "logs")
        try:
            run = run_dip(gw, args.steady, args.dip, args.after)
            scenario = live_scenario(gw, run)
            inputs = gw.deployment.control.inputs
            assert inputs is not None
        finally:
            gw.close()
    live = live_samples(run)
    simulated = replay(scenario, live[-1].time_s + 1)
    agreement = compare(live, simulated)
    dip_s, restore_s = (at for at, _ in scenario.link_schedule)
    ticks = [s.time_s for s in simulated]
    rows = []
    for sample in live:
        k = bisect.bisect_right(ticks, sample.time_s) - 1
        sim = simulated[k] if k >= 0 else None
        rows.append(
            {
                "time_s": round(sample.time_s, 2),
                "live_gbps": round(sample.capacity_gbps, 3),
                "live_t": round(sample.threshold_tokens, 1),
                "sim_gbps": None if sim is None else round(sim.capacity_gbps, 3),
                "sim_t": None if sim is None else round(sim.threshold_tokens, 1),
            }
        )
    fallbacks = run.trace[-1][3] - run.trace[0][3]  # local prefills after a refused hand-off
    failures = Counter(f"{at - run.start_s:.1f} s: {error[:100]}" for at, error in run.errors)
    slow = [
        (round(r.sent_s - run.start_s, 1), round(r.done_s - r.sent_s, 1), r.path)
        for r in run.requests
        if r.done_s - r.sent_s > 5.0
    ]
    if args.json:
        result = {
            "slow_requests": slow,
            "fallbacks": fallbacks,
            "failed_prefills": dict(failures),
            "dip_s": dip_s,
            "restore_s": restore_s,
            "requests": len(scenario.requests),
            "agreement": dataclasses.asdict(agreement),
            "trajectory": rows,
        }
        print(json.dumps(result, indent=1))
        return
    print(f"{len(scenario.requests)} requests; dip at {dip_s:.1f} s, restored at {restore_s:.1f} s")
    c = scenario.controller
    print(
        f"controller at the start: t {c.state.threshold_tokens:.0f}, t_plan {c.t_plan:.0f} "
        f"(planner {c.t_solved:.0f}), bounds {inputs.bounds}"
    )
    for m in inputs.measured:
        points = zip(m.num_tokens, m.prefill_s, strict=True)
        seconds = ", ".join(f"{n}: {s * 1e3:.1f} ms" for n, s in points)
        print(f"profile {m.cluster}: {seconds}; KV {m.kv_bytes[-1] / m.num_tokens[-1]:.0f} B/token")
    print(f"{'time s':>7} {'live Gbit/s':>11} {'live t':>7} {'sim Gbit/s':>10} {'sim t':>7}")
    for r in rows:
        sim_gbps = "-" if r["sim_gbps"] is None else f"{r['sim_gbps']:.3f}"
        sim_t = "-" if r["sim_t"] is None else f"{r['sim_t']:.0f}"
        live = f"{r['live_gbps']:11.3f} {r['live_t']:7.0f}"
        print(f"{r['time_s']:7.1f} {live} {sim_gbps:>10} {sim_t:>7}")
    print(f"KV fallbacks to a local prefill: {fallbacks}; failed prefill results: {dict(failures)}")
    print(f"requests over 5 s (sent at, seconds, path): {slow}")
    a = agreement
    print(
        f"t, |sim - live| / live over {a.samples} samples: mean {a.mean_relative:.1%}, "
        f"max {a.max_relative:.1%}, within 20%: {a.within_20_percent:.0%}"
    )


if __name__ == "__main__":
    main()
