"""The three deployment kinds the planner compares, and what it reports for each.

- ``PrfaasPd``: a PrfaaS prefill cluster plus a local PD cluster split N_p + N_d = N; requests
  with l_inc > t go to PrfaaS (KV over the link), the rest prefill on PD-P.
- ``HomogeneousPd``: one PD cluster, N_p + N_d = N, every request prefilled locally.
- ``NaiveHeterogeneous``: every prefill on the PrfaaS cluster, every decode on the local
  cluster, no length routing (t = 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from prfaas.planner.profile import PrefillProfile
from prfaas.planner.throughput import DecodeSpec

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PrfaasPd:
    name: str
    prfaas_instances: int
    prfaas_profile: PrefillProfile
    pd_instances: int
    pd_prefill_profile: PrefillProfile
    decode: DecodeSpec
    bandwidth_gbps: float
    kind: str = "prfaas_pd"


@dataclass(frozen=True)
class HomogeneousPd:
    name: str
    pd_instances: int
    pd_prefill_profile: PrefillProfile
    decode: DecodeSpec
    kind: str = "homogeneous_pd"


@dataclass(frozen=True)
class NaiveHeterogeneous:
    name: str
    prfaas_instances: int
    prfaas_profile: PrefillProfile
    pd_instances: int  # all decode
    decode: DecodeSpec
    bandwidth_gbps: float
    kind: str = "naive_heterogeneous"


Deployment = PrfaasPd | HomogeneousPd | NaiveHeterogeneous


@dataclass(frozen=True)
class SearchCurves:
    """Λ_max over the searched grid: rows are N_p values, columns thresholds (one column
    when the deployment has no threshold)."""

    n_p_values: tuple[int, ...]
    thresholds_tokens: FloatArray
    throughput_rps: FloatArray  # (len(n_p_values), len(thresholds_tokens))


@dataclass(frozen=True)
class PlanResult:
    deployment: str
    kind: str
    threshold_tokens: float | None
    n_prfaas: int | None
    n_p: int | None
    n_d: int
    theta_prfaas_rps: float | None
    theta_pd_p_rps: float | None
    theta_pd_d_rps: float
    throughput_rps: float
    bottleneck: str
    offload_fraction: float
    l_long_tokens: float | None
    l_short_tokens: float | None
    egress_gbps: float
    link_gbps: float | None
    curves: SearchCurves | None = field(default=None, compare=False, repr=False)

    @property
    def link_share(self) -> float | None:
        return None if not self.link_gbps else self.egress_gbps / self.link_gbps

    def to_json(self) -> dict[str, Any]:
        """The keys of ``prfaas plan --json``, in order."""
        keys = (
            "deployment",
            "threshold_tokens",
            "n_prfaas",
            "n_p",
            "n_d",
            "theta_prfaas_rps",
            "theta_pd_p_rps",
            "theta_pd_d_rps",
            "throughput_rps",
            "bottleneck",
            "offload_fraction",
            "l_long_tokens",
            "l_short_tokens",
            "egress_gbps",
        )
        return {key: getattr(self, key) for key in keys}
