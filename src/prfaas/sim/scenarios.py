"""Scenario runs (static vs adaptive in one go) and the figure each scenario is judged by.

- link-dip: SLO attainment over the whole run (goal for the adaptive policy: >= 95%).
- burst: P99 TTFT over sliding windows of arrivals; the pre-burst level is the P99 of the
  ``LEVEL_WINDOW_S`` before the burst; recovery is the first window starting after the
  burst from which every window's P99 stays within ``RECOVERY_TOLERANCE`` of that level
  for ``HOLD_S`` (goal: <= 120 s after the burst ends).
- drift: max rate judged on arrivals after the drift (``measure_from_s``), found by the
  same bisection as ``--find-max-rate`` (goal: adaptive >= 1.10x static).
- trace: cache hit rate and TTFT, cache-aware against cache-blind routing.
- routing: the same on any workload, every cache-aware policy against cache-blind on hit
  rate, mean and P99 TTFT, beside the ideal hit rate (``routing_eval.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prfaas.sim.config import ScenarioSection, SimSettings
from prfaas.sim.metrics import RunResult, percentile
from prfaas.sim.routing_eval import ideal_hit_rate, judge
from prfaas.sim.runner import SimContext, find_max_rate, meets_slo, run_one, workload

LEVEL_WINDOW_S = 600.0
P99_WINDOW_S = 60.0
WINDOW_STEP_S = 10.0
RECOVERY_TOLERANCE = 1.2
HOLD_S = 120.0


@dataclass
class ScenarioReport:
    name: str
    kind: str
    runs: dict[str, RunResult] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # policy -> figures
    goal: str = ""
    met: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "kind": self.kind,
            "goal": self.goal,
            "met": self.met,
            "figures": self.figures,
            "runs": {p: r.summary for p, r in self.runs.items()},
        }


def windowed_p99(result: RunResult, start_s: float, end_s: float) -> list[tuple[float, float]]:
    """(window start, P99 TTFT of arrivals in [start, start + P99_WINDOW_S)) per step."""
    points = []
    t = start_s
    while t + P99_WINDOW_S <= end_s:
        ttfts = [
            r.ttft_s if r.ttft_s is not None else float("inf")
            for r in result.requests
            if t <= r.arrival_s < t + P99_WINDOW_S
        ]
        if ttfts:
            points.append((t, percentile(ttfts, 99)))
        t += WINDOW_STEP_S
    return points


def burst_recovery(result: RunResult, burst_start_s: float, burst_end_s: float) -> dict[str, Any]:
    before = [
        r.ttft_s if r.ttft_s is not None else float("inf")
        for r in result.requests
        if burst_start_s - LEVEL_WINDOW_S <= r.arrival_s < burst_start_s
    ]
    level = percentile(before, 99)
    after = windowed_p99(result, burst_end_s, result.requests[-1].arrival_s)
    recovered_at = None
    for i, (t, _) in enumerate(after):
        # back = within tolerance here and for every window of the next HOLD_S
        hold = [p for u, p in after[i:] if u <= t + HOLD_S]
        if all(p <= RECOVERY_TOLERANCE * level for p in hold):
            recovered_at = t
            break
    during = windowed_p99(result, burst_start_s, burst_end_s + 300)
    return {
        "pre_burst_p99_ttft_s": level,
        "peak_window_p99_ttft_s": max((p for _, p in during), default=None),
        "recovery_s": None if recovered_at is None else recovered_at - burst_end_s,
    }


def run_scenario(
    ctx: SimContext,
    name: str,
    sc: ScenarioSection,
    s: SimSettings,
    deployment: str,
    policies: list[str],
    rate_rps: float | None,
    progress: Callable[[str, float], Callable[[float], None] | None] | None = None,
) -> ScenarioReport:
    report = ScenarioReport(name, sc.kind)
    ideal = None
    if sc.kind == "routing":
        traffic = workload(ctx, s, sc, rate_rps)
        ideal = ideal_hit_rate(traffic, s.block_tokens, s.warmup_s, s.duration_s)
    for policy in policies:
        cb = progress(f"{name} / {policy}", s.duration_s) if progress else None
        result = run_one(ctx, deployment, policy, rate_rps, s, sc, cb)
        report.runs[policy] = result
        summary = result.summary
        figures: dict[str, Any] = {
            "slo_attainment": summary["slo_attainment"],
            "ttft_p50_s": summary["ttft_p50_s"],
            "ttft_p99_s": summary["ttft_p99_s"],
        }
        if sc.kind == "burst" and sc.bursts:
            figures.update(burst_recovery(result, sc.bursts[0].start_s, sc.bursts[0].end_s))
        if sc.kind in ("trace", "routing"):
            figures["cache_hit_rate"] = summary["cache_hit_rate"]
            figures["ttft_mean_s"] = summary["ttft_mean_s"]
        if ideal is not None:
            figures["ideal_hit_rate"] = ideal
        if sc.kind == "drift":
            figures["max_rate_after_drift_rps"] = _max_rate_after(
                ctx, sc, s, deployment, policy, 2.0 * (rate_rps or 1.0)
            )
        report.figures[policy] = figures
    _judge(report)
    return report


def _max_rate_after(
    ctx: SimContext, sc: ScenarioSection, s: SimSettings, deployment: str, policy: str, hi: float
) -> float:
    warmup_s = sc.measure_from_s if sc.measure_from_s is not None else s.warmup_s

    def run_at(rate_rps: float) -> RunResult:
        return run_one(ctx, deployment, policy, rate_rps, s, sc, None, warmup_s)

    max_rate, _ = find_max_rate(
        run_at, lambda res: meets_slo(res, s.ttft_slo_s, s.tpot_slo_s), hi, tolerance_rps=0.02
    )
    return max_rate


def _judge(report: ScenarioReport) -> None:
    adaptive = report.figures.get("prfaas-adaptive")
    static = report.figures.get("prfaas-static")
    if report.kind == "link-dip" and adaptive:
        report.goal = "adaptive SLO attainment >= 95% over the run"
        report.met = (adaptive["slo_attainment"] or 0) >= 0.95
    elif report.kind == "burst" and adaptive:
        report.goal = "adaptive P99 TTFT back to its pre-burst level within 120 s of the burst"
        rec = adaptive.get("recovery_s")
        report.met = rec is not None and rec <= 120
    elif report.kind == "drift" and adaptive and static:
        report.goal = "after the drift, adaptive max rate >= 1.10x static"
        a, b = adaptive["max_rate_after_drift_rps"], static["max_rate_after_drift_rps"]
        report.met = b > 0 and a >= 1.10 * b
    elif report.kind == "routing":
        report.goal, report.met = judge(report.figures)
    elif report.kind == "trace":
        blind, aware = report.figures.get("prfaas-cache-blind"), static
        if blind and aware:
            report.goal = "cache-aware routing: higher hit rate and lower mean TTFT than blind"
            report.met = aware["cache_hit_rate"] > blind["cache_hit_rate"] and (
                aware["ttft_mean_s"] or 1e9
            ) < (blind["ttft_mean_s"] or 1e9)
