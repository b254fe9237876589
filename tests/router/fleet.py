"""A static fleet for router tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from prfaas.router.types import ClusterView, InstanceView


@dataclass
class StaticFleet:
    cluster_views: list[ClusterView] = field(
        default_factory=lambda: [ClusterView("pd", "pd"), ClusterView("remote", "prfaas")]
    )
    instance_views: list[InstanceView] = field(
        default_factory=lambda: [
            InstanceView("pd-p0", "pd", "prefill"),
            InstanceView("pd-p1", "pd", "prefill"),
            InstanceView("pd-d0", "pd", "decode", load=3),
            InstanceView("pd-d1", "pd", "decode", load=1),
            InstanceView("r0", "remote", "prefill"),
            InstanceView("r1", "remote", "prefill"),
        ]
    )

    def clusters(self) -> Sequence[ClusterView]:
        return self.cluster_views

    def instances(self) -> Sequence[InstanceView]:
        return self.instance_views
