"""The router: one decision per request, from the fleet's current view and the kv index.

``Router.route`` is the whole algorithm: residency filter → region (``regions``: the
tenant's first region that can serve, and the PrfaaS clusters it may use) → cached prefix per
cluster →
path policy → prefill instance (cache affinity under CHWBL's load bound, or an
``InstanceChoice`` such as the TTFT estimate) → decode instance (least loaded). The
caller (live gateway or simulator) owns the ``FleetView``, feeds the kv index with cache
events and installs new ``RouterState``s from the control loop; the router itself keeps no
per-request state beyond a window of observed incremental lengths that the long-term
control loop re-plans on and, with an ``InstanceChoice``, its record of dispatched
prefills (``inflight``): the caller then reports each prefill's end (``prefill_finished``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prfaas.router.chwbl import ConsistentHashRing, load_bound, pick
from prfaas.router.inflight import InflightPrefills
from prfaas.router.instance_choice import InstanceChoice
from prfaas.router.kv_index import KvIndexBackend
from prfaas.router.policies import PathPolicy
from prfaas.router.regions import RegionMap
from prfaas.router.types import (
    ClusterView,
    InstanceView,
    NoRouteError,
    Path,
    PathChoice,
    RouteDecision,
    RouteRequest,
    RouterState,
)

# Hash rings kept: one per set of healthy prefill instances a cluster had lately (a ring is
# ``virtual_nodes`` points per instance; one evicted is built again when its set returns).
RINGS_KEPT = 32


@dataclass(frozen=True)
class RouterConfig:
    block_tokens: int  # tokens per kv-index block
    balance_factor: float = 1.25  # CHWBL: no instance above this multiple of the mean load
    cache_aware: bool = True  # False: ignore the kv index (least-loaded prefill instance)
    virtual_nodes: int = 64
    length_window: int = 2000  # incremental lengths kept for the long-term re-plan

    def __post_init__(self) -> None:
        if self.block_tokens < 1 or self.balance_factor < 1 or self.length_window < 1:
            raise ValueError("need block_tokens >= 1, balance_factor >= 1, length_window >= 1")


class FleetView(Protocol):
    """The live view the router decides on; implemented by the gateway and the simulator."""

    def clusters(self) -> Sequence[ClusterView]: ...

    def instances(self) -> Sequence[InstanceView]: ...


class Router:
    def __init__(
        self,
        config: RouterConfig,
        policy: PathPolicy,
        fleet: FleetView,
        kv_index: KvIndexBackend,
        state: RouterState,
        instance_choice: InstanceChoice | None = None,  # None: CHWBL (or least loaded)
        regions: RegionMap | None = None,  # None: the first allowed PD cluster, every PrfaaS one
    ) -> None:
        self.config, self.policy, self.fleet, self.kv_index = config, policy, fleet, kv_index
        self.state = state  # replaced whole by the control loop
        self.instance_choice = instance_choice
        self.regions = regions
        self.inflight = InflightPrefills()  # fed only when instance_choice is set
        self.observed_lengths: deque[int] = deque(maxlen=config.length_window)
        # The rings of the healthy-instance sets seen last (LRU): a large cluster whose
        # instances come and go would otherwise keep one ring per set it ever had.
        self._rings: OrderedDict[tuple[str, ...], ConsistentHashRing] = OrderedDict()
        # (prefill instance, decode instance) -> whether that path is quarantined (the live
        # canary sets it; the simulator has none).
        self.quarantined: Callable[[str, str], bool] | None = None

    def route(self, request: RouteRequest) -> RouteDecision:
        # Residency, then the region: hard filters, first.
        instances = [i for i in self.fleet.instances() if i.healthy and request.allows(i.cluster)]
        pd, prfaas = self._allowed_clusters(request, instances)
        instances = [i for i in instances if i.cluster == pd or i.cluster in prfaas]
        decode, instances = self._decode_and_usable(pd, instances)
        held = self._held_blocks(request)
        cached = self._cluster_tokens(request, held, instances)
        choice = self.policy.choose(request, cached, pd, prfaas, self.state)
        choice, prefill = self._prefill_or_other_path(
            request, choice, instances, held, cached, pd, prfaas
        )
        self.observed_lengths.append(request.prompt_len - max(cached.values(), default=0))
        decision = self._decision(request, choice, prefill, decode, held, cached, instances)
        if self.instance_choice is not None:
            self.inflight.add(request.request_id, prefill, decision.incremental_tokens)
        return decision

    def _decode_and_usable(
        self, pd: str, instances: list[InstanceView]
    ) -> tuple[str, list[InstanceView]]:
        """The least-loaded decode instance and the instances a request to it may use: with
        ``quarantined`` set (the canary), no prefill instance whose path to that decode
        instance is quarantined. A decode instance left with no prefill instance gives way to
        the next; if none has one, quarantine is ignored (serving beats refusing)."""
        decodes = sorted(
            (i for i in instances if i.cluster == pd and i.role == "decode"),
            key=lambda i: (i.load, i.name),
        )
        if not decodes:
            raise NoRouteError(f"no healthy decode instance in {pd}")
        blocked = self.quarantined
        if blocked is None:
            return decodes[0].name, instances
        for decode in decodes:
            usable = [
                i for i in instances if i.role != "prefill" or not blocked(i.name, decode.name)
            ]
            if any(i.role == "prefill" for i in usable):
                return decode.name, usable
        return decodes[0].name, instances

    def prefill_finished(self, request_id: str) -> None:
        """The caller saw this request's prefill end (done, failed or aborted)."""
        self.inflight.finish(request_id)

    def _allowed_clusters(
        self, request: RouteRequest, instances: Sequence[InstanceView]
    ) -> tuple[str, list[str]]:
        """The PD cluster to decode in and the PrfaaS clusters the prefill may use."""
        if self.regions is not None:
            return self.regions.choose(request, instances)
        allowed = [c for c in self.fleet.clusters() if request.allows(c.name)]
        pd = [c.name for c in allowed if c.kind == "pd"]
        if not pd:
            raise NoRouteError(f"{request.request_id}: no allowed PD cluster to decode in")
        return pd[0], [c.name for c in allowed if c.kind == "prfaas"]

    def _held_blocks(self, request: RouteRequest) -> dict[str, int]:
        if not self.config.cache_aware:
            return {}
        # An engine computes at least one prompt token, so a hit covers at most the full
        # blocks before the last token: a prompt ending on a block boundary can't use its last.
        usable = max(request.prompt_len - 1, 0) // self.config.block_tokens
        return self.kv_index.prefix_blocks(request.block_hashes[:usable])

    def _cluster_tokens(
        self, request: RouteRequest, held: Mapping[str, int], instances: Sequence[InstanceView]
    ) -> dict[str, int]:
        """Longest cached prefix per allowed cluster, in tokens, leaving >= 1 token to compute."""
        cluster_of = {i.name: i.cluster for i in instances if i.role == "prefill"}
        cached: dict[str, int] = {}
        for name, blocks in held.items():
            cluster = cluster_of.get(name)
            if cluster is not None:
                tokens = self._tokens(request, blocks)
                cached[cluster] = max(cached.get(cluster, 0), tokens)
        return cached

    def _tokens(self, request: RouteRequest, blocks: int) -> int:
        return min(blocks * self.config.block_tokens, request.prompt_len - 1)

    def _pick_prefill(
        self,
        request: RouteRequest,
        cluster: str,
        instances: Sequence[InstanceView],
        held: Mapping[str, int],
    ) -> str:
        """Longest cached prefix among instances within CHWBL's load bound, else the ring."""
        group = [i for i in instances if i.cluster == cluster and i.role == "prefill"]
        if not group:
            raise NoRouteError(f"{request.request_id}: no healthy prefill instance in {cluster}")
        if self.instance_choice is not None:
            at = {name: self._tokens(request, blocks) for name, blocks in held.items()}
            return self.instance_choice.pick(request, group, at, self.inflight)
        loads = {i.name: i.load for i in group}
        if not self.config.cache_aware:
            return min(group, key=lambda i: (i.load, i.name)).name
        bound = load_bound(loads, self.config.balance_factor)
        warm = [(held[n], n) for n in loads if held.get(n, 0) > 0 and loads[n] < bound]
        if warm:
            return max(warm)[1]  # most cached blocks; the name breaks ties deterministically
        key = request.block_hashes[0] if request.block_hashes else request.request_id
        return pick(self._ring(tuple(sorted(loads))), key, loads, self.config.balance_factor)

    def _prefill_or_other_path(
        self,
        request: RouteRequest,
        choice: PathChoice,
        instances: Sequence[InstanceView],
        held: Mapping[str, int],
        cached: Mapping[str, int],
        pd: str,
        prfaas: Sequence[str],
    ) -> tuple[PathChoice, str]:
        """The policy's prefill instance; if its cluster has none healthy (all draining for a
        role switch, or down), the other path's, so that the request is still served. The
        fallback stays inside the allowed clusters: residency is never traded for it."""
        try:
            return choice, self._pick_prefill(request, choice.prefill_cluster, instances, held)
        except NoRouteError:
            others = [c for c in ([pd, *prfaas]) if c != choice.prefill_cluster]
            for cluster in others:
                if any(i.cluster == cluster and i.role == "prefill" for i in instances):
                    path: Path = "pd-p" if cluster == pd else "prfaas"
                    other = PathChoice(path, cluster, request.prompt_len - cached.get(cluster, 0))
                    return other, self._pick_prefill(request, cluster, instances, held)
            raise

    def _ring(self, names: tuple[str, ...]) -> ConsistentHashRing:
        ring = self._rings.get(names)
        if ring is None:
            ring = self._rings[names] = ConsistentHashRing(names, self.config.virtual_nodes)
            if len(self._rings) > RINGS_KEPT:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(names)
        return ring

    @property
    def num_rings(self) -> int:
        return len(self._rings)

    def _decision(
        self,
        request: RouteRequest,
        choice: PathChoice,
        prefill: str,
        decode: str,
        held: Mapping[str, int],
        cached: Mapping[str, int],
        instances: Sequence[InstanceView],
    ) -> RouteDecision:
        at_instance = self._tokens(request, held[prefill]) if prefill in held else 0
        pull_tokens, holder = 0, None
        if choice.pull_from is not None:
            pull_tokens = max(cached.get(choice.pull_from, 0) - at_instance, 0)
            in_cluster = {
                i.name for i in instances if i.cluster == choice.pull_from and i.role == "prefill"
            }
            holders = [(blocks, name) for name, blocks in held.items() if name in in_cluster]
            holder = max(holders)[1] if holders and pull_tokens > 0 else None
        cached_tokens = at_instance + pull_tokens
        return RouteDecision(
            request_id=request.request_id,
            path=choice.path,
            prefill_cluster=choice.prefill_cluster,
            prefill_instance=prefill,
            decode_instance=decode,
            cached_tokens=cached_tokens,
            incremental_tokens=request.prompt_len - cached_tokens,
            pull_from=choice.pull_from if pull_tokens > 0 else None,
            pull_tokens=pull_tokens,
            pull_instance=holder,
        )
