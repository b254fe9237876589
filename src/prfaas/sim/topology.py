"""What a run simulates: clusters, their instances and costs, and the links between them.

``SimFleet`` owns the live instance objects by name and answers the router's ``SimFleet``
protocol with fresh frozen views (the router never sees simulator objects). A PD-cluster
instance converted to another role is replaced by a new object under the same name, with
a new kv-index epoch (its cache is gone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prfaas.planner.throughput import DecodeSpec
from prfaas.router.kv_index import KvIndex
from prfaas.router.types import ClusterKind, ClusterView, InstanceView, Role
from prfaas.sim.cache import BlockLru
from prfaas.sim.instances import DecodeInstance, PrefillCost, PrefillInstance


@dataclass(frozen=True)
class SimClusterSpec:
    name: str
    kind: ClusterKind
    num_prefill: int
    num_decode: int
    prefill_cost: PrefillCost | None = None
    decode: DecodeSpec | None = None


@dataclass(frozen=True)
class SimLinkSpec:
    src: str
    dst: str
    capacity_gbps: float
    rtt_ms: float = 0.0
    schedule: tuple[tuple[float, float], ...] = ()  # (at_s, capacity_gbps) steps


@dataclass(frozen=True)
class FleetSpec:
    clusters: tuple[SimClusterSpec, ...]
    links: tuple[SimLinkSpec, ...]
    block_tokens: int = 512
    cache_capacity_blocks: int = 0  # per prefill instance; 0: no prefix cache
    max_batch_tokens: int = 8192  # prefill token budget per batch
    pipeline_layers: int = 32  # KV ships layer by layer: the last of these waits for the end


Instance = PrefillInstance | DecodeInstance


class SimFleet:
    def __init__(self, spec: FleetSpec, kv_index: KvIndex) -> None:
        self.spec, self.kv_index = spec, kv_index
        self._cluster_views = [ClusterView(c.name, c.kind) for c in spec.clusters]
        self._clusters = {c.name: c for c in spec.clusters}
        self.by_name: dict[str, Instance] = {}
        self._epochs: dict[str, int] = {}
        for c in spec.clusters:
            for k in range(c.num_prefill):
                self._add(f"{c.name}-p{k}", c, "prefill")
            for k in range(c.num_decode):
                self._add(f"{c.name}-d{k}", c, "decode")

    def clusters(self) -> Sequence[ClusterView]:
        return self._cluster_views

    def instances(self) -> Sequence[InstanceView]:
        return [inst.view() for inst in self.by_name.values()]

    def of(self, cluster: str, role: Role) -> list[Instance]:
        return [i for i in self.by_name.values() if i.cluster == cluster and i.role == role]

    def convert(self, name: str) -> Instance:
        """Replace a drained instance by one of the other role (same name, new epoch)."""
        old = self.by_name[name]
        cluster = self._clusters[old.cluster]
        return self._add(name, cluster, "decode" if old.role == "prefill" else "prefill")

    def _add(self, name: str, cluster: SimClusterSpec, role: Role) -> Instance:
        epoch = self._epochs.get(name, -1) + 1
        self._epochs[name] = epoch
        self.kv_index.register(name, cluster.name, epoch)
        inst: Instance
        if role == "prefill":
            if cluster.prefill_cost is None:
                raise ValueError(f"cluster {cluster.name} has prefill instances but no profile")
            cache = BlockLru(name, self.spec.cache_capacity_blocks, self.kv_index, epoch)
            inst = PrefillInstance(
                name,
                cluster.name,
                cluster.prefill_cost,
                self.spec.max_batch_tokens,
                cache,
                self.spec.block_tokens,
            )
        else:
            if cluster.decode is None:
                raise ValueError(f"cluster {cluster.name} has decode instances but no decode spec")
            d = cluster.decode
            inst = DecodeInstance(name, cluster.name, d.max_batch_size, d.step_s)
        self.by_name[name] = inst
        return inst
