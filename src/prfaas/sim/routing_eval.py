"""The ``routing`` scenario kind: cache-blind against cache-aware instance choice.

Each cache-aware policy of the scenario is judged against ``prfaas-cache-blind`` on the
measured window: a higher cache hit rate AND a lower mean AND a lower P99 TTFT (where the
ideal hit rate is 0, an equal hit rate: there is nothing to reuse). The report says which
policies meet it; the scenario's goal is met when one does. Beside the
figures, the ideal hit rate: the share of measured prompt tokens an unbounded cache shared
by every instance would serve (block granularity, at least one token computed, every
earlier request's blocks present, warm-up included), the ceiling no routing can pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prfaas.sim.request import SimRequest

BLIND = "prfaas-cache-blind"


def ideal_hit_rate(
    requests: Iterable[SimRequest], block_tokens: int, warmup_s: float, duration_s: float
) -> float:
    seen: set[int] = set()
    hit_tokens = prompt_tokens = 0
    for r in requests:
        if warmup_s <= r.arrival_s < duration_s:
            blocks = 0
            for h in r.hash_ids:
                if h not in seen:
                    break
                blocks += 1
            hit_tokens += min(blocks * block_tokens, r.prompt_len - 1)
            prompt_tokens += r.prompt_len
        seen.update(r.hash_ids)
    return hit_tokens / prompt_tokens if prompt_tokens else 0.0


def beats_blind(aware: Mapping[str, Any], blind: Mapping[str, Any]) -> bool:
    """Higher hit rate (equal passes only where the ideal is 0: nothing to reuse) and lower
    mean and P99 TTFT; a TTFT of None (some request never got a first token) is infinite."""

    def ttft(figures: Mapping[str, Any], key: str) -> float:
        value = figures.get(key)
        return float("inf") if value is None else float(value)

    nothing_to_hit = aware.get("ideal_hit_rate") == 0.0
    hit_ok = aware["cache_hit_rate"] > blind["cache_hit_rate"] or (
        nothing_to_hit and aware["cache_hit_rate"] == blind["cache_hit_rate"]
    )
    return (
        hit_ok
        and ttft(aware, "ttft_mean_s") < ttft(blind, "ttft_mean_s")
        and ttft(aware, "ttft_p99_s") < ttft(blind, "ttft_p99_s")
    )


def judge(figures: Mapping[str, Mapping[str, Any]]) -> tuple[str, bool | None]:
    """(goal with each policy's verdict, met by at least one); None without a blind run."""
    blind = figures.get(BLIND)
    aware = {p: f for p, f in figures.items() if p != BLIND}
    if blind is None or not aware:
        return "", None
    verdicts = {p: beats_blind(f, blind) for p, f in aware.items()}
    passed = ", ".join(p for p, ok in verdicts.items() if ok) or "none"
    failed = ", ".join(p for p, ok in verdicts.items() if not ok) or "none"
    goal = (
        f"higher hit rate and lower mean and P99 TTFT than {BLIND} "
        f"(met by: {passed}; not by: {failed})"
    )
    return goal, any(verdicts.values())
