"""The paper's steady-state throughput model (section 3.4, eqs. 3-6), vectorized over grids.

    (3) Θ_prfaas = min(N_prfaas / T_prefill(l_long), B_out / S_kv(l_long))
    (4) Θ_pd-p   = N_p / T_prefill(l_short)
    (5) Θ_pd-d   = N_d · BS_max / (T_decode · L_out)
    (6) Λ_max    = min(Θ_prfaas / p, Θ_pd-p / (1 − p), Θ_pd-d)

All rates in requests/s. No queueing term: a stage at 100% utilization counts as keeping up
(the simulator measures what queues do). Prefill compute and KV transfer are assumed
pipelined layer by layer, so the slower of the two binds. A stage that receives no traffic
(p = 0 or p = 1) does not bound Λ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from prfaas.planner.profile import PrefillProfile
from prfaas.planner.units import gbps_to_bytes_per_s

FloatArray = npt.NDArray[np.float64]

STAGES = ("prfaas_prefill", "link", "pd_prefill", "pd_decode")


@dataclass(frozen=True)
class DecodeSpec:
    """Decode capacity of one instance: BS_max requests advance one token per ``step_s``."""

    max_batch_size: int
    step_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.max_batch_size / self.step_s


def theta_prefill_rps(
    num_instances: float, profile: PrefillProfile, num_tokens: FloatArray
) -> FloatArray:
    """Eq. 3 first term / eq. 4: requests/s of mean length ``num_tokens`` the instances finish."""
    return np.asarray(num_instances / profile.prefill_s(num_tokens), dtype=np.float64)


def theta_link_rps(
    bandwidth_gbps: float, profile: PrefillProfile, num_tokens: FloatArray
) -> FloatArray:
    """Eq. 3 second term: requests/s whose KV the link carries."""
    return np.asarray(
        gbps_to_bytes_per_s(bandwidth_gbps) / profile.kv_bytes(num_tokens), dtype=np.float64
    )


def theta_decode_rps(num_instances: float, decode: DecodeSpec, output_tokens: float) -> float:
    """Eq. 5."""
    return num_instances * decode.tokens_per_s / output_tokens


def lambda_max_rps(
    theta_prfaas: FloatArray,
    theta_pd_p: FloatArray,
    theta_pd_d: FloatArray | float,
    offload_fraction: FloatArray,
) -> FloatArray:
    """Eq. 6, with a stage that gets no traffic left unbounded."""
    p = np.asarray(offload_fraction, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        prfaas_bound = np.where(p > 0, theta_prfaas / p, np.inf)
        pd_p_bound = np.where(p < 1, theta_pd_p / (1 - p), np.inf)
    return np.asarray(np.minimum(np.minimum(prfaas_bound, pd_p_bound), theta_pd_d))


def egress_gbps(throughput_rps: float, offload_fraction: float, kv_bytes: float) -> float:
    """PrfaaS egress at the operating point: offloaded requests/s times their KV size."""
    return throughput_rps * offload_fraction * kv_bytes * 8 / 1e9
