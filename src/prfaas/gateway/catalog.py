"""The models a gateway serves: each served name's versions, each behind its own backend
(its own workers, router and kv index: a version's KV and caches never meet another's),
and the traffic split between a name's two versions (``traffic.TrafficSplit``).

A request picks its version once, at the gateway, before tokenizing; everything after
(routing, the prefill, the decode stream, decode failover, cache pulls) runs inside that
version's backend, so a request uses one version end to end.

A version counts what it holds (``hold``/``drop``: from the pick to the request's end). A
version whose weight is 0 and that holds nothing is *drained*: ``on_drained`` is called
once per drain (the deployment frees its instances' caches there).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from prfaas.gateway.backend import Backend
from prfaas.gateway.traffic import TrafficSplit


@dataclass(eq=False)
class ServedVersion:
    name: str  # what clients pass as ``model``
    version: str
    backend: Backend
    held: int = 0  # requests (and their sequences) picked and not yet finished

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"


class UnknownModel(LookupError):
    pass


class ModelCatalog:
    def __init__(
        self,
        versions: Sequence[ServedVersion],
        weights: Mapping[str, float] | None = None,
        *,
        sticky_tenants: frozenset[str] = frozenset(),
        rng: random.Random | None = None,
    ) -> None:
        """``weights``: percent per version key (``name@version``), default 100 for a name's
        only version; ``sticky_tenants``: the served names whose sessions default to the
        tenant (a request without the session header keeps its tenant's version)."""
        if not versions:
            raise ValueError("a gateway serves at least one model")
        self.versions = {v.key: v for v in versions}
        self.default_name = versions[0].name
        self._sticky_tenants = sticky_tenants
        self.splits: dict[str, TrafficSplit] = {}
        by_name: dict[str, dict[str, float]] = {}
        for v in versions:
            by_name.setdefault(v.name, {})[v.version] = (weights or {}).get(v.key, 100.0)
        for name, split in by_name.items():
            self.splits[name] = TrafficSplit(split, rng=rng)
        self._drained: set[str] = set()  # keys whose drain was reported
        self.on_drained: Callable[[ServedVersion], None] = lambda _: None

    @classmethod
    def single(cls, backend: Backend) -> ModelCatalog:
        return cls([ServedVersion(backend.model_name, "v1", backend)])

    def names(self) -> list[str]:
        return list(self.splits)

    def of(self, name: str) -> list[ServedVersion]:
        return [v for v in self.versions.values() if v.name == name]

    def pick(self, model: str | None, tenant: str, session: str | None) -> ServedVersion:
        """The version a new request of ``model`` (None: the default name) uses; raises
        ``UnknownModel``. Session keys are per tenant: one tenant never steers another's."""
        name = self.default_name if model is None else model
        split = self.splits.get(name)
        if split is None:
            raise UnknownModel(name)
        key = None
        if session is not None:
            key = f"{tenant}\x00{session}"
        elif name in self._sticky_tenants:
            key = tenant
        return self.versions[f"{name}@{split.pick(key)}"]

    def usage_label(self, version: ServedVersion) -> str:
        """The model a usage line names: the served name, with the version if it has two."""
        return version.key if len(self.splits[version.name].weights) > 1 else version.name

    def num_decode(self) -> int | None:
        counts = [v.backend.num_decode() for v in self.versions.values()]
        known = [c for c in counts if c is not None]
        return sum(known) if known else None

    def hold(self, version: ServedVersion) -> None:
        version.held += 1
        self._drained.discard(version.key)

    def drop(self, version: ServedVersion) -> None:
        version.held -= 1
        assert version.held >= 0, f"{version.key} dropped more than it held"
        self._check_drained(version)

    def set_weight(self, name: str, version: str, percent: float) -> dict[str, float]:
        """Shift ``name``'s new sessions: ``version`` gets ``percent``, the other the rest;
        raises ``UnknownModel`` or ``ValueError``."""
        split = self.splits.get(name)
        if split is None:
            raise UnknownModel(name)
        weights = split.set_weight(version, percent)
        for v in self.of(name):
            if weights[v.version] > 0:
                self._drained.discard(v.key)
            self._check_drained(v)
        return weights

    def weight(self, version: ServedVersion) -> float:
        return self.splits[version.name].weights[version.version]

    def drained(self, version: ServedVersion) -> bool:
        return version.key in self._drained

    def _check_drained(self, version: ServedVersion) -> None:
        if version.held == 0 and self.weight(version) == 0 and version.key not in self._drained:
            self._drained.add(version.key)
            self.on_drained(version)
