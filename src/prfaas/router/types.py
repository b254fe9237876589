"""What the router sees and what it decides: small frozen dataclasses, no behaviour.

The same types serve the live gateway (block hashes are ``bytes`` from
``prfaas.kvcache.hashing``) and the simulator (block hashes are trace ``hash_ids`` ints):
the router only compares and hashes them. Lengths are in tokens, rates in Gbps, times in s.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

# One definition of a role: the one an instance registers with (re-exported here).
from prfaas.messages import Role as Role

if TYPE_CHECKING:
    from prfaas.router.prefill_time import PrefillTimeModel

Path = Literal["prfaas", "pd-p"]
ClusterKind = Literal["prfaas", "pd"]
Mode = Literal["scarce", "abundant"]


@dataclass(frozen=True)
class RouteRequest:
    """One request as the router sees it: no tokens, only their length and block hashes.

    ``block_hashes[i]`` names the prefix up to the end of block ``i`` (hashes chain), so a
    holder of ``block_hashes[i]`` can serve ``(i + 1) * block_tokens`` cached tokens.
    ``allowed_clusters`` (residency) is a hard filter: ``None`` means any cluster.
    ``regions``: the tenant's regions in order of preference (``router.regions``); ``None``
    means the deployment's order.
    """

    request_id: str
    tenant: str
    prompt_len: int
    block_hashes: Sequence[Hashable] = ()
    allowed_clusters: frozenset[str] | None = None
    regions: tuple[str, ...] | None = None

    def allows(self, cluster: str) -> bool:
        return self.allowed_clusters is None or cluster in self.allowed_clusters


@dataclass(frozen=True)
class ClusterView:
    name: str
    kind: ClusterKind


@dataclass(frozen=True)
class InstanceView:
    """One engine instance. ``load`` is its queued + running requests (what CHWBL bounds);
    ``queued_tokens`` the prompt tokens waiting for prefill (what the controller watches).
    A draining instance (being converted to another role) is reported unhealthy."""

    name: str
    cluster: str
    role: Role
    load: int = 0
    queued_tokens: int = 0
    healthy: bool = True


@dataclass(frozen=True)
class LinkView:
    """The path ``src`` → ``dst``: configured cap, measured goodput, and their ratio of use."""

    src: str
    dst: str
    capacity_gbps: float
    goodput_gbps: float = 0.0
    utilization: float = 0.0


@dataclass(frozen=True)
class RouterState:
    """What the control loop sets and the path policy reads (replaced whole, never mutated)."""

    threshold_tokens: float
    mode: Mode = "scarce"
    costs: PathCosts | None = None  # None: abundant mode pulls by the paper's rule alone


@dataclass(frozen=True)
class PathCosts:
    """What the control loop measured for abundant mode's pull decision (``policies.py``):
    per cluster, one prefill instance's T(l) and the prefill work queued per instance (s);
    seconds a pulled token's KV takes over the link's measured headroom (inf: none)."""

    prefill: Mapping[str, PrefillTimeModel]
    wait_s: Mapping[str, float]
    pull_s_per_token: float


@dataclass(frozen=True)
class PathChoice:
    """A policy's answer before instance selection. ``pull_from`` names the cluster whose
    longer cached prefix is copied to ``prefill_cluster`` first (abundant mode only)."""

    path: Path
    prefill_cluster: str
    incremental_tokens: int
    pull_from: str | None = None


@dataclass(frozen=True)
class RouteDecision:
    request_id: str
    path: Path
    prefill_cluster: str
    prefill_instance: str
    decode_instance: str
    cached_tokens: int  # at the chosen prefill instance (after any pull)
    incremental_tokens: int  # prompt tokens the prefill computes
    pull_from: str | None = None  # cluster the cached prefix is pulled from, if any
    pull_tokens: int = 0
    pull_instance: str | None = None  # the instance in ``pull_from`` holding that prefix


class NoRouteError(RuntimeError):
    """No healthy instance satisfies the request's residency and role needs."""
