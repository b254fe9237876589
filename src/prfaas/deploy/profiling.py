"""Start-up profiling: measure the deployed instances, then solve the threshold t.

After every worker has registered, ``profile_deployment`` asks one prefill worker of the PD
cluster and one of the PrfaaS cluster for short measured prefills at a few lengths inside
the context (``POST /profile``), and one decode worker for a batch's decode step. Those
become planner profiles (T_prefill measured, S_kv from the engine's layer specs), the link
cap is the configured ``rate_gbps`` of the PrfaaS → PD link, and the planner solves t for
the deployed instance counts (``PrfaasPd``, the split held at the deployed N_p).

t is applied inside ``threshold_bounds`` (2 blocks to 3/4 of the context): where both
clusters run the same model on the same kind of machine the planner may put t at either
end, and then one path would serve nothing. ``ThresholdChoice`` records the solved and the
applied t and why; ``/status`` shows it. A pinned t (``--threshold``) skips the solve.
Profiling that fails leaves the guess ``default_threshold`` and says so: serving never
waits on it.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np

from prfaas.deploy.config import DeployConfig
from prfaas.gateway.fleet import WorkerFleet
from prfaas.messages import TOKEN_HEADER, ProfileRequest, ProfileResult
from prfaas.planner.deployments import PrfaasPd
from prfaas.planner.profile import TableProfile
from prfaas.planner.search import best_threshold_for_split, plan
from prfaas.planner.throughput import DecodeSpec
from prfaas.planner.workload import EmpiricalLengths

logger = logging.getLogger(__name__)

Source = Literal["profiled", "pinned", "default"]
NUM_LENGTHS = 4
REPEATS = 2
DECODE_BATCH = 4
DECODE_TOKENS = 8
UNCAPPED_GBPS = 1e4  # a link with no rate cap: the planner sees it as never binding
PRIOR_POINTS = 64  # lengths in the uniform prior the planner solves on before any traffic
PROFILE_TIMEOUT_S = 300.0
# The longest profiled prompt, so that start-up profiling stays well under a minute on a
# 2-core CPU with the embedded model. Beyond it T_prefill is extrapolated along the last
# segment, which underestimates where attention dominates (long prompts on small models).
PROFILE_MAX_TOKENS = 512


def default_threshold(max_model_len: int) -> int:
    """The guess when nothing is measured: t inside the context, so both paths serve."""
    return max(16, max_model_len // 8)


def profile_lengths(max_model_len: int, block_size: int) -> list[int]:
    """``NUM_LENGTHS`` lengths spread geometrically over [2 blocks, 3/4 of the context]
    (at most ``PROFILE_MAX_TOKENS``)."""
    hi = max(2, min((3 * max_model_len) // 4, PROFILE_MAX_TOKENS))
    lo = min(2 * block_size, hi // 2)
    points = np.geomspace(max(lo, 1), hi, NUM_LENGTHS)
    return sorted({round(x) for x in points})


def threshold_bounds(max_model_len: int, block_size: int) -> tuple[float, float]:
    """Where t may be applied: both paths then get the prompts on their side of it."""
    hi = 0.75 * max_model_len
    return min(2.0 * block_size, hi / 2), hi


def threshold_step(max_model_len: int, block_size: int) -> float:
    """The planner's grid step for t: 64 steps over the context, at least a block."""
    return float(max(block_size, max_model_len // 64))


@dataclass(frozen=True)
class MeasuredPrefill:
    """One instance's measured T_prefill (s) and S_kv (bytes) at a few lengths."""

    cluster: str
    instance: str
    num_tokens: tuple[int, ...]
    prefill_s: tuple[float, ...]
    kv_bytes: tuple[int, ...]

    @classmethod
    def from_result(cls, cluster: str, instance: str, r: ProfileResult) -> MeasuredPrefill:
        return cls(cluster, instance, tuple(r.num_tokens), tuple(r.prefill_s), tuple(r.kv_bytes))

    def planner_profile(self) -> TableProfile:
        """Piecewise-linear in the measured points. Prefill time never falls with length:
        a measurement that says so is noise, raised to the one before it."""
        times = np.maximum.accumulate(np.asarray(self.prefill_s, dtype=np.float64))
        return TableProfile(
            tuple(float(n) for n in self.num_tokens),
            tuple(float(t) for t in times),
            tuple(float(b) for b in self.kv_bytes),
            fit="interp",
        )


@dataclass(frozen=True)
class ThresholdChoice:
    """What t is, where it came from, and the measurements behind it."""

    applied_tokens: float
    source: Source
    reason: str
    solved_tokens: float | None = None
    measured: tuple[MeasuredPrefill, ...] = ()
    decode: DecodeSpec | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "applied_tokens": self.applied_tokens,
            "solved_tokens": self.solved_tokens,
            "reason": self.reason,
            "prefill_s": {
                m.cluster: {
                    "instance": m.instance,
                    "num_tokens": list(m.num_tokens),
                    "seconds": list(m.prefill_s),
                    "kv_bytes": list(m.kv_bytes),
                }
                for m in self.measured
            },
            "decode_step_s": None if self.decode is None else self.decode.step_s,
            "decode_batch": None if self.decode is None else self.decode.max_batch_size,
        }


@dataclass(frozen=True)
class PlannerInputs:
    """Everything the controller needs, from the measurements and the deploy config."""

    deployment: PrfaasPd
    workload: EmpiricalLengths
    pd_cluster: str
    prfaas_cluster: str
    n_p: int  # deployed PD prefill instances
    bounds: tuple[float, float]
    step_tokens: float
    measured: tuple[MeasuredPrefill, ...] = ()


def uniform_prior(lo: float, max_model_len: int) -> EmpiricalLengths:
    """Every length from ``lo`` to the context equally likely, until traffic is observed."""
    points = np.linspace(lo, max_model_len, PRIOR_POINTS)
    return EmpiricalLengths(tuple(round(x) for x in points))


def planner_inputs(
    cfg: DeployConfig,
    pd: MeasuredPrefill,
    prfaas: MeasuredPrefill,
    decode: DecodeSpec,
    max_model_len: int,
    block_size: int,
) -> PlannerInputs:
    pd_spec = next(c for c in cfg.clusters if c.name == pd.cluster)
    prfaas_spec = next(c for c in cfg.clusters if c.name == prfaas.cluster)
    cap = next(
        (
            link.rate_gbps
            for link in cfg.links
            if (link.src, link.dst) == (prfaas.cluster, pd.cluster)
        ),
        None,
    )
    deployment = PrfaasPd(
        name="deployed",
        prfaas_instances=len(prfaas_spec.instances),
        prfaas_profile=prfaas.planner_profile(),
        pd_instances=len(pd_spec.instances),
        pd_prefill_profile=pd.planner_profile(),
        decode=decode,
        bandwidth_gbps=UNCAPPED_GBPS if cap is None else cap,
    )
    return PlannerInputs(
        deployment=deployment,
        workload=uniform_prior(min(pd.num_tokens[0], prfaas.num_tokens[0]), max_model_len),
        pd_cluster=pd.cluster,
        prfaas_cluster=prfaas.cluster,
        n_p=sum(1 for i in pd_spec.instances if i.role == "prefill"),
        bounds=threshold_bounds(max_model_len, block_size),
        step_tokens=threshold_step(max_model_len, block_size),
        measured=(pd, prfaas),
    )


def solve_threshold(inputs: PlannerInputs, output_tokens: float) -> float:
    """The planner's best t with the PD split held at the deployed N_p. Decode is left out
    (unbounded): with the split fixed it does not depend on t, and where it binds every t
    would tie (as in ``Controller``)."""
    unbounded = dataclasses.replace(inputs.deployment, decode=DecodeSpec(10**9, 1.0))
    result = plan(unbounded, inputs.workload, output_tokens, inputs.step_tokens)
    return best_threshold_for_split(result, inputs.n_p)[0]


def clamp(t: float, bounds: tuple[float, float]) -> float:
    return min(max(t, bounds[0]), bounds[1])


def choose_threshold(
    inputs: PlannerInputs, decode: DecodeSpec, output_tokens: float
) -> ThresholdChoice:
    solved = solve_threshold(inputs, output_tokens)
    applied = clamp(solved, inputs.bounds)
    lo, hi = inputs.bounds
    if applied == solved:
        reason = "planner optimum on the measured profiles"
    elif solved > hi:
        reason = (
            f"planner optimum {solved:.0f} is beyond 3/4 of the context; kept at {hi:.0f} "
            "so that both paths serve (longer prompts go remote)"
        )
    else:
        reason = (
            f"planner optimum {solved:.0f} is under 2 blocks; kept at {lo:.0f} "
            "so that both paths serve (shorter prompts prefill locally)"
        )
    return ThresholdChoice(applied, "profiled", reason, solved, inputs.measured, decode)


class ProfilingError(RuntimeError):
    """A worker could not be profiled (unreachable, refused, or no such worker)."""


async def profile_worker(
    client: httpx.AsyncClient, url: str, request: ProfileRequest, cluster: str | None = None
) -> ProfileResult:
    """``cluster``: the name the worker's certificate must prove (over mutual TLS)."""
    extensions = {} if cluster is None else {"sni_hostname": cluster}
    try:
        r = await client.post(
            url + "/profile",
            content=request.encode(),
            timeout=PROFILE_TIMEOUT_S,
            extensions=extensions,
        )
    except httpx.HTTPError as e:
        raise ProfilingError(f"{url}: {e}") from e
    if r.status_code != 200:
        raise ProfilingError(f"{url} answered {r.status_code}: {r.text[:200]}")
    return ProfileResult.decode(r.content)


def _first(fleet: WorkerFleet, cluster: str, role: str) -> tuple[str, str]:
    names = sorted(
        n
        for n, r in fleet.workers.items()
        if r.info.cluster == cluster and r.info.role == role and fleet.healthy(n)
    )
    if not names:
        raise ProfilingError(f"no healthy {role} worker in cluster {cluster!r}")
    return names[0], fleet.workers[names[0]].info.http_url


async def measure(
    cfg: DeployConfig,
    fleet: WorkerFleet,
    cluster_token: str,
    max_model_len: int,
    block_size: int,
    tls: ssl.SSLContext | None = None,
) -> tuple[MeasuredPrefill, MeasuredPrefill, DecodeSpec]:
    """Profile one PD prefill, one PrfaaS prefill and one PD decode worker, one at a time
    (on a shared host, concurrent runs would measure each other)."""
    pd = next(c.name for c in cfg.clusters if c.kind == "pd")
    remote = next((c.name for c in cfg.clusters if c.kind == "prfaas"), None)
    if remote is None:
        raise ProfilingError("no PrfaaS cluster: there is no threshold to solve")
    lengths = profile_lengths(max_model_len, block_size)
    prefill_req = ProfileRequest(num_tokens=lengths, repeats=REPEATS)
    decode_req = ProfileRequest(
        num_tokens=lengths[:1], repeats=1, decode_batch=DECODE_BATCH, decode_tokens=DECODE_TOKENS
    )
    measured: list[MeasuredPrefill] = []
    headers = {TOKEN_HEADER: cluster_token}
    async with httpx.AsyncClient(headers=headers, verify=tls or True) as client:
        for cluster in (pd, remote):
            name, url = _first(fleet, cluster, "prefill")
            result = await profile_worker(client, url, prefill_req, cluster if tls else None)
            measured.append(MeasuredPrefill.from_result(cluster, name, result))
            logger.info(
                "profiled %s (%s): prefill %s s at %s tokens",
                name,
                cluster,
                [round(t, 4) for t in result.prefill_s],
                result.num_tokens,
            )
        name, url = _first(fleet, pd, "decode")
        decoded = await profile_worker(client, url, decode_req, pd if tls else None)
    decode = DecodeSpec(decoded.decode_batch, decoded.decode_step_s)
    logger.info(
        "profiled %s: a decode step of %d requests takes %.4f s", name, DECODE_BATCH, decode.step_s
    )
    return measured[0], measured[1], decode


def profiles_at_start(cfg: DeployConfig) -> bool:
    """Whether ``profile_deployment`` measures the instances (the rule it follows below):
    until it has, t is not settled and the deployment is not ready."""
    pinned, control = cfg.policy.threshold_tokens, cfg.policy.control
    return cfg.policy.name == "prfaas" and (
        pinned is None or (control.enabled and control.adapt_mode)
    )


async def profile_deployment(
    cfg: DeployConfig,
    fleet: WorkerFleet,
    cluster_token: str,
    max_model_len: int,
    block_size: int,
    tls: ssl.SSLContext | None = None,
) -> tuple[ThresholdChoice, PlannerInputs | None]:
    """The start-up t and, where the control loop can run, the planner inputs for it.

    A pinned t is kept as it is; the instances are profiled only if the loop will use the
    measurements (``control.adapt_mode``). Policies other than ``prfaas`` use no t."""
    pinned, control = cfg.policy.threshold_tokens, cfg.policy.control
    fallback = float(pinned) if pinned is not None else float(default_threshold(max_model_len))
    source: Source = "pinned" if pinned is not None else "default"
    if cfg.policy.name != "prfaas":
        return ThresholdChoice(fallback, source, f"policy {cfg.policy.name} routes without t"), None
    if pinned is not None and not (control.enabled and control.adapt_mode):
        return ThresholdChoice(fallback, "pinned", "pinned by the operator"), None
    try:
        pd, remote, decode = await measure(
            cfg, fleet, cluster_token, max_model_len, block_size, tls
        )
        inputs = planner_inputs(cfg, pd, remote, decode, max_model_len, block_size)
        if pinned is not None:
            reason = "pinned by the operator"
            return ThresholdChoice(
                fallback, "pinned", reason, None, inputs.measured, decode
            ), inputs
        choice = choose_threshold(inputs, decode, control.output_tokens)
    except (ProfilingError, ValueError) as e:  # ValueError: a split the planner cannot solve
        logger.warning("start-up profiling failed (%s); t = %.0f (%s)", e, fallback, source)
        return ThresholdChoice(fallback, source, f"profiling failed: {e}"), None
    logger.info(
        "threshold t = %.0f tokens (planner optimum %.0f): %s",
        choice.applied_tokens,
        choice.solved_tokens or 0.0,
        choice.reason,
    )
    return choice, inputs
