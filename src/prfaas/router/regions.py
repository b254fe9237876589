"""Regions: which PD cluster serves a request, and which PrfaaS clusters it may offload to.

A region holds at most one PD cluster (its decode instances serve the region's requests) and
any number of PrfaaS clusters. A tenant names the regions it may use, in order of
preference; residency (``RouteRequest.allowed_clusters``) is the set of their clusters and is
never traded for anything. A request goes to the PD cluster of the tenant's first region
that can serve it:

- ``down``: no healthy decode instance (all dead, wedged or draining): never chosen;
- ``full``: every healthy decode instance carries ``max_load_per_decode`` requests or more
  (more would queue): chosen only when every allowed region with a healthy decode instance
  is full (the first of them; the gateway's admission queue bounds the wait);
- ``serving``: otherwise.

Nothing here remembers a failover: each request looks again, so traffic returns to a region
as soon as it serves again. Offload: a PD cluster may use the PrfaaS clusters linked to it
(``offload``), among those the tenant allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from prfaas.router.types import InstanceView, NoRouteError, RouteRequest

RegionState = Literal["serving", "full", "down"]


@dataclass(frozen=True)
class RegionMap:
    region_of: Mapping[str, str]  # cluster -> its region (every cluster)
    pd_cluster: Mapping[str, str]  # region -> its PD cluster (regions that decode)
    order: tuple[str, ...]  # regions with a PD cluster, in the deployment's order
    offload: Mapping[str, frozenset[str]]  # PD cluster -> PrfaaS clusters linked to it
    max_load_per_decode: int | None = None  # None: a region is never full

    def preference(self, request: RouteRequest) -> list[str]:
        """The regions with a PD cluster the request may decode in, best first: the
        tenant's order, then (unrestricted tenants) the deployment's."""
        named = [r for r in request.regions or () if r in self.pd_cluster]
        rest = [r for r in self.order if r not in named]
        return [r for r in [*named, *rest] if request.allows(self.pd_cluster[r])]

    def state(self, region: str, instances: Sequence[InstanceView]) -> RegionState:
        pd = self.pd_cluster[region]
        decodes = [i for i in instances if i.cluster == pd and i.role == "decode" and i.healthy]
        if not decodes:
            return "down"
        cap = self.max_load_per_decode
        if cap is not None and all(i.load >= cap for i in decodes):
            return "full"
        return "serving"

    def choose(
        self, request: RouteRequest, instances: Sequence[InstanceView]
    ) -> tuple[str, list[str]]:
        """The PD cluster to decode in and the PrfaaS clusters its prefill may use."""
        regions = self.preference(request)
        states = {r: self.state(r, instances) for r in regions}
        up = [r for r in regions if states[r] != "down"]
        serving = [r for r in up if states[r] == "serving"]
        if not up:
            tried = ", ".join(regions) or "none allowed"
            raise NoRouteError(f"{request.request_id}: no allowed region can serve ({tried})")
        pd = self.pd_cluster[(serving or up)[0]]
        prfaas = [c for c in sorted(self.offload.get(pd, ())) if request.allows(c)]
        return pd, prfaas

    def rank(self, request: RouteRequest, cluster: str) -> int:
        """Where ``cluster``'s region stands in the request's preference (decode failover
        resumes in the best one first); past the end if it is not a decode region."""
        regions = self.preference(request)
        region = self.region_of.get(cluster)
        return regions.index(region) if region in regions else len(regions)
