"""Start-up profiling: measure the deployed instances, then solve the threshold t.

After every worker has registered, ``profile_deployment`` asks one prefill worker of the PD
cluster and one of the PrfaaS cluster for measured prefills at lengths spread up to the
context (``POST /profile``; at most ``PROFILE_MAX_TOKENS``), and one decode worker for a
batch's decode step. Those become planner profiles (T(l) = a + b·l + c·l² fitted on the
measured points, coefficients >= 0, so attention's quadratic term carries to the context;
S_kv from the engine's layer specs), the link
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
from prfaas.router.prefill_time import PrefillTimeModel

logger = logging.getLogger(__name__)

Source = Literal["profiled", "pinned", "default"]
NUM_LENGTHS = 5
REPEATS = 2
DECODE_BATCH = 4
DECODE_TOKENS = 8
UNCAPPED_GBPS = 1e4  # a link with no rate cap: the planner sees it as never binding
PRIOR_POINTS = 64  # lengths in the uniform prior the planner solves on before any traffic
PROFILE_TIMEOUT_S = 300.0
# The longest profiled prompt: a quarter of the embedded model's context, so that start-up
# profiling stays within minutes on a 2-core CPU. Beyond it the fitted quadratic
# extrapolates (a line would miss attention's l² term: the old 512-token profile did).
PROFILE_MAX_TOKENS = 2048
PROFILE_GRID = 64  # lengths the fitted T(l) is tabulated at, up to the context


def default_threshold(max_model_len: int) -> int:
    """The guess when nothing is measured: t inside the context, so both paths serve."""
    return max(16, max_model_len // 8)


def profile_lengths(max_model_len: int, block_size: int) -> list[int]:
    """``NUM_LENGTHS`` lengths from 2 blocks to the context (at most ``PROFILE_MAX_TOKENS``):
    the first geometric (a fixed cost shows at short lengths), the rest even (the quadratic
    term shows at long ones)."""
    hi = max(3, min(max_model_len - 1, PROFILE_MAX_TOKENS))
    lo = max(1, min(2 * block_size, hi // 4))
    points = [lo, *np.linspace(hi / (NUM_LENGTHS - 1), hi, NUM_LENGTHS - 1)]
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

    def prefill_model(self) -> PrefillTimeModel:
        """T(l) = a + b·l + c·l² least-squares on the measured points, coefficients >= 0
        (prefill time never falls with length); a line through the longest point if fewer
        than 3 lengths were measured."""
        points = [(float(n), s) for n, s in zip(self.num_tokens, self.prefill_s, strict=True)]
        if len({n for n, _ in points}) >= 3:
            return PrefillTimeModel.fit(points)
        n, s = max(points)
        return PrefillTimeModel(0.0, s / max(n, 1.0))

    def planner_profile(self, max_tokens: int | None = None) -> TableProfile:
        """The fitted T(l) tabulated up to ``max_tokens`` (default: the longest measured),
        with S_kv linear in the measured sizes."""
        hi = max(max_tokens or 0, max(self.num_tokens))
        grid = np.unique(np.linspace(1.0, float(hi), PROFILE_GRID).round())
        model = self.prefill_model()
        kv = np.polyval(np.polyfit(self.num_tokens, self.kv_bytes, 1), grid)
        return TableProfile(
            tuple(float(n) for n in grid),
            tuple(model.seconds(int(n)) for n in grid),
            tuple(float(b) for b in kv),
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
            "clamped": self.solved_tokens is not None and self.solved_tokens != self.applied_tokens,
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
        prfaas_profile=prfaas.planner_profile(max_model_len),
        pd_instances=len(pd_spec.instances),
        pd_prefill_profile=pd.planner_profile(max_model_len),
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
    reason = clamp_reason(solved, inputs.bounds) or "planner optimum on the measured profiles"
    return ThresholdChoice(applied, "profiled", reason, solved, inputs.measured, decode)


def clamp_reason(solved: float, bounds: tuple[float, float]) -> str | None:
    """Why the planner's t is not applied as it is; None when it is inside the bounds."""
    lo, hi = bounds
    if solved > hi:
        return (
            f"planner optimum {solved:.0f} is beyond 3/4 of the context; kept at {hi:.0f} "
            "so that both paths serve (longer prompts go remote)"
        )
    if solved < lo:
        return (
            f"planner optimum {solved:.0f} is under 2 blocks; kept at {lo:.0f} "
            "so that both paths serve (shorter prompts prefill locally)"
        )
    return None


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
