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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prfaas.router.inflight import InflightPrefills
from prfaas.router.prefill_time import PrefillTimeModel
from prfaas.router.types import InstanceView, RouteRequest


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
