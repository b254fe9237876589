"""Instance choice inside a cluster: the plug point after the path policy.

Contract of ``InstanceChoice.pick``: ``instances`` are the cluster's healthy prefill
instances that residency allows (never empty); ``cached_tokens`` maps an instance to the
prefix it holds for this request, in tokens, at most ``prompt_len - 1`` (absent: none, and
empty when the router is cache-blind); ``inflight`` is the router's record of prefills it
dispatched and has not seen finish. The answer is one of ``instances``' names.

The router's built-in choice (no ``InstanceChoice``) is CHWBL over request counts
(``chwbl.py``). ``EstimatedTtft`` instead picks the instance with the smallest estimated
time to first token, as Mooncake's conductor does:

    TTFT_i ≈ wait_i + T(l_inc,i) + l_inc,i · transfer_s_per_token
    wait_i  = Σ T(l) over the prefills dispatched to i and unfinished (``InflightPrefills``)
    l_inc,i = prompt_len − cached_tokens[i]

so cache affinity enters only through l_inc: a longer cached prefix is worth exactly the
prefill time it saves, weighed against the queue in front of it. A load bound is applied
per request first, like CHWBL's in work units: an instance may take the request only while
``wait_i ≤ balance_factor · (Σ_j wait_j + T(prompt_len)) / n``; the least-waiting instance
always qualifies, so the bound never leaves a request without an instance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from prfaas.router.inflight import InflightPrefills, QueuedWork
from prfaas.router.types import InstanceView, RouteRequest

FIT_POINTS = 16  # even steps of a profile ``PrefillTimeModel.sampled`` fits on


class InstanceChoice(Protocol):
    name: str

    def pick(
        self,
        request: RouteRequest,
        instances: Sequence[InstanceView],
        cached_tokens: Mapping[str, int],
        inflight: InflightPrefills,
    ) -> str: ...


@dataclass(frozen=True)
class PrefillTimeModel:
    """T(l) = a + b·l + c·l²: seconds one instance takes to prefill l incremental tokens."""

    a_s: float
    b_s_per_token: float
    c_s_per_token2: float = 0.0

    def __post_init__(self) -> None:
        if min(self.a_s, self.b_s_per_token, self.c_s_per_token2) < 0:
            raise ValueError(f"prefill time coefficients must be >= 0, got {self}")

    def seconds(self, num_tokens: int) -> float:
        return self.a_s + self.b_s_per_token * num_tokens + self.c_s_per_token2 * num_tokens**2

    def queued_s(self, work: QueuedWork) -> float:
        """Σ T(l_i) over the queued prefills (exact for this model)."""
        return (
            self.a_s * work.requests
            + self.b_s_per_token * work.tokens
            + self.c_s_per_token2 * work.tokens_squared
        )

    @classmethod
    def fit(cls, points: Sequence[tuple[float, float]]) -> PrefillTimeModel:
        """Least-squares quadratic through ``(num_tokens, prefill_s)`` points (>= 3 distinct
        lengths), coefficients clipped at 0 (a profile's T is increasing and convex)."""
        if len({x for x, _ in points}) < 3:
            raise ValueError("fitting T(l) = a + b·l + c·l² needs at least 3 distinct lengths")
        lengths, seconds = zip(*points, strict=True)
        c, b, a = (float(v) for v in np.polyfit(lengths, seconds, 2))  # as planner profiles
        return cls(max(a, 0.0), max(b, 0.0), max(c, 0.0))

    @classmethod
    def sampled(cls, prefill_s: Callable[[int], float], max_tokens: int) -> PrefillTimeModel:
        """``fit`` on a profile sampled at ``FIT_POINTS`` even steps up to ``max_tokens`` and
        at powers of two from 256 (short prompts are most of the traffic)."""
        lengths = sorted(
            {max_tokens * (k + 1) // FIT_POINTS for k in range(FIT_POINTS)}
            | {256 << k for k in range(12) if 256 << k < max_tokens}
        )
        return cls.fit([(float(n), prefill_s(n)) for n in lengths])


@dataclass(frozen=True)
class ClusterCosts:
    """What the estimate knows about one cluster's prefill instances.

    ``transfer_s_per_token``: seconds of KV transfer per computed token on the way to the
    decode instance that the prefill does not hide (0 for a fast local link)."""

    prefill: PrefillTimeModel
    transfer_s_per_token: float = 0.0


def load_bound_s(waits_s: Mapping[str, float], request_s: float, balance_factor: float) -> float:
    """The most queued work (s) an instance may hold and still take a request of ``request_s``."""
    return balance_factor * (sum(waits_s.values()) + request_s) / len(waits_s)


class EstimatedTtft:
    """Least estimated TTFT within a per-request load bound (module docstring)."""

    name = "ttft"

    def __init__(self, costs: Mapping[str, ClusterCosts], balance_factor: float = 1.25) -> None:
        if balance_factor < 1:
            raise ValueError(f"balance_factor must be >= 1, got {balance_factor}")
        self.costs, self.balance_factor = dict(costs), balance_factor

    def pick(
        self,
        request: RouteRequest,
        instances: Sequence[InstanceView],
        cached_tokens: Mapping[str, int],
        inflight: InflightPrefills,
    ) -> str:
        costs = self._costs(instances[0].cluster)
        waits = {i.name: costs.prefill.queued_s(inflight.work(i.name)) for i in instances}
        bound = load_bound_s(waits, costs.prefill.seconds(request.prompt_len), self.balance_factor)
        best: tuple[float, str] | None = None
        for name, wait_s in waits.items():
            if wait_s > bound + 1e-9:  # float slack: the least-waiting always qualifies
                continue
            l_inc = request.prompt_len - cached_tokens.get(name, 0)
            ttft_s = wait_s + costs.prefill.seconds(l_inc) + l_inc * costs.transfer_s_per_token
            if best is None or (ttft_s, name) < best:
                best = (ttft_s, name)
        assert best is not None, "the least-waiting instance is always within the bound"
        return best[1]

    def _costs(self, cluster: str) -> ClusterCosts:
        costs = self.costs.get(cluster)
        if costs is None:
            raise ValueError(f"EstimatedTtft has no prefill time model for cluster {cluster!r}")
        return costs
