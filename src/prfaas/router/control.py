"""The adaptive control loop: the paper's two timescales (section 3.4.3), over the planner.

Short term (``short_tick``, about a second):
- mode: egress utilization above ``scarce_above`` → scarce; below ``abundant_below`` →
  abundant; in between the mode holds (hysteresis, so it does not flap).
- t: ``t_plan`` is the planner's best threshold for the current split at the link capacity
  last solved for (decode left out: with the split fixed it does not depend on t); it is
  re-solved when the capacity moves by more than ``bandwidth_change``. Around it, queue
  depth nudges t by ``nudge`` per tick: more queued prefill work (in seconds) on the PrfaaS
  side, or a saturated link, raises t; more on the PD-P side lowers it. t stays within
  [t_plan / max_nudge, t_plan * max_nudge] and relaxes toward t_plan when queues balance, or
  toward ``abundant_t_factor`` * t_plan in abundant mode while PrfaaS is not queued (the
  planner's t maximizes throughput; below capacity the faster PrfaaS side gives lower TTFT).
Long term (``long_tick``, minutes): re-solve the planner (t and the N_p/N_d split) on the
observed incremental lengths; if the best split beats the current one by ``min_gain`` and
something asks for it (``_queues_ask``: the side to be strengthened is short now, the link has
dipped, or instances a dip took can go back), return the role changes (least-loaded instances
first) and adopt the new t_plan; with no role change and no queue beyond ``queue_slack_s`` the
t in force stays (under light load moving work to the slower cluster only costs TTFT).

Operating-point rules, kept here so that the live loop and the simulator run the same code:
- ``bounds``: t (and t_plan) never leave [lo, hi];
- ``pinned_tokens``: t never moves, and no role change is proposed (the operator owns it);
- ``adapt_mode`` off: the returned mode is the configured one (the hysteresis still runs);
- egress: each tick's measured ``LinkView`` is smoothed here (``egress_smoothing``, the
  newest sample's weight; 1 keeps it raw) before the mode and t read it (``egress``).
- pulls: each state carries ``PathCosts`` (``policies.py``): T(l) fitted on each side's
  profile, the queued prefill seconds per instance measured this tick, and the seconds a
  pulled token's KV takes over the link's measured headroom (capacity × (1 − utilization)),
  so abundant mode pulls a prefix only where that is estimated to give an earlier first token.

The controller only decides; the caller measures (instances, the link's rate), applies role
changes (drain, then switch; ``not_applied`` for those that failed) and installs the returned
``RouterState`` in the router. Both callers make the same calls: ``short_tick(instances,
link)`` every ``short_interval_s`` and ``long_tick(instances, lengths)`` every
``long_interval_s``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prfaas.planner.deployments import PlanResult, PrfaasPd
from prfaas.planner.profile import PrefillProfile
from prfaas.planner.search import best_threshold_for_split, plan
from prfaas.planner.throughput import DecodeSpec
from prfaas.planner.workload import EmpiricalLengths, LengthDistribution
from prfaas.router.prefill_time import PrefillTimeModel
from prfaas.router.types import InstanceView, LinkView, Mode, PathCosts, Role, RouterState


@dataclass(frozen=True)
class ControlConfig:
    short_interval_s: float = 1.0
    long_interval_s: float = 300.0
    scarce_above: float = 0.7  # egress utilization
    abundant_below: float = 0.4
    saturated_above: float = 0.95  # egress utilization at which t rises regardless of queues
    queue_ratio: float = 2.0  # queued-seconds imbalance that nudges t
    queue_slack_s: float = 2.0  # imbalances below this many seconds are noise
    nudge: float = 0.05  # relative t step per short tick
    max_nudge: float = 2.0
    bandwidth_change: float = 0.2  # relative capacity change that re-solves t_plan
    min_gain: float = 0.05  # relative Λ_max gain that justifies converting instances
    min_samples: int = 200  # observed lengths needed before a long-term re-plan
    threshold_step_tokens: float = 250.0
    adapt_mode: bool = True  # False: the configured mode holds whatever the link does
    egress_smoothing: float = 1.0  # EWMA weight of the newest egress sample; 1: none
    # Abundant mode with PrfaaS not queued: t relaxes to t_plan * this (more to the faster side).
    abundant_t_factor: float = 0.9

    def __post_init__(self) -> None:
        if self.short_interval_s <= 0 or self.long_interval_s <= 0:
            raise ValueError("control intervals must be positive")
        if not 0.0 < self.egress_smoothing <= 1.0:
            raise ValueError("egress_smoothing must be in (0, 1]")
        if not 0.0 < self.abundant_t_factor <= 1.0:
            raise ValueError("abundant_t_factor must be in (0, 1]")


@dataclass(frozen=True)
class OperatingPoint:
    """Where a live deployment starts and what the operator fixed: the deployed split
    (``n_p`` PD prefill instances), the start-up t and the planner's own t, the configured
    mode, a pinned t, and the bounds t stays within."""

    n_p: int | None = None  # None: the planner's best split
    threshold_tokens: float | None = None  # None: t_plan
    t_plan: float | None = None  # None: solved here
    mode: Mode = "scarce"
    pinned_tokens: float | None = None
    bounds: tuple[float, float] | None = None


@dataclass(frozen=True)
class RoleChange:
    instance: str
    to_role: Role


class Controller:
    def __init__(
        self,
        config: ControlConfig,
        deployment: PrfaasPd,
        workload: LengthDistribution,
        output_tokens: float,
        pd_cluster: str,
        prfaas_cluster: str,
        start: OperatingPoint = OperatingPoint(),
    ) -> None:
        self.config, self.output_tokens = config, output_tokens
        self.pd_cluster, self.prfaas_cluster = pd_cluster, prfaas_cluster
        self._deployment, self._workload = deployment, workload
        self._point = start
        self._plan = self._solve(deployment.bandwidth_gbps)
        assert self._plan.n_p is not None
        # The split the loop steers to (counts pending conversions, not failed ones).
        self.n_p = self._plan.n_p if start.n_p is None else start.n_p
        self._deployed_n_p = self.n_p  # the split the loop gives instances back to
        self._solved_gbps = deployment.bandwidth_gbps
        # The planner's own t (before the bounds) at the last re-plan, and t_plan within them.
        self.t_solved = self._threshold() if start.t_plan is None else start.t_plan
        self.t_plan = self._clamp(self.t_solved)
        t = self.t_plan if start.threshold_tokens is None else start.threshold_tokens
        if start.pinned_tokens is not None:
            t = start.pinned_tokens
        self._mode: Mode = start.mode  # the link's mode, with hysteresis
        max_tokens = int(workload.max_tokens)
        self._prefill_models = {
            prfaas_cluster: _time_model(deployment.prfaas_profile, max_tokens),
            pd_cluster: _time_model(deployment.pd_prefill_profile, max_tokens),
        }
        self._kv_bits_per_token = _kv_bits_per_token(deployment.prfaas_profile, max_tokens)
        self.egress = LinkView(prfaas_cluster, pd_cluster, deployment.bandwidth_gbps)
        self._costs = self._path_costs(0.0, 0.0)
        self.state = RouterState(t, start.mode, self._costs)

    def short_tick(self, instances: Sequence[InstanceView], link: LinkView) -> RouterState:
        """One short tick: ``link`` is the PrfaaS → PD link's cap and its measured rate over
        the last interval (goodput and utilization, before smoothing)."""
        c = self.config
        egress = self._smooth(link)
        if abs(egress.capacity_gbps - self._solved_gbps) > c.bandwidth_change * self._solved_gbps:
            self._solved_gbps = egress.capacity_gbps
            self._plan = self._solve(egress.capacity_gbps)
            self.t_solved = self._threshold()
            self.t_plan = self._clamp(self.t_solved)
        if egress.utilization > c.scarce_above:
            self._mode = "scarce"
        elif egress.utilization < c.abundant_below:
            self._mode = "abundant"
        remote_s, local_s = self._queued_seconds(instances)
        self._costs = self._path_costs(remote_s, local_s)
        target = self.t_plan
        if self._mode_out() == "abundant" and remote_s <= c.queue_slack_s:
            target = self.t_plan * c.abundant_t_factor
        t = self.state.threshold_tokens
        if (
            egress.utilization > c.saturated_above
            or remote_s > c.queue_ratio * local_s + c.queue_slack_s
        ):
            t *= 1 + c.nudge
        elif local_s > c.queue_ratio * remote_s + c.queue_slack_s:
            t /= 1 + c.nudge
        else:
            t += 0.1 * (target - t)
        t = min(max(t, self.t_plan / c.max_nudge), self.t_plan * c.max_nudge)
        self.state = RouterState(self._hold(t), self._mode_out(), self._costs)
        return self.state

    def long_tick(
        self, instances: Sequence[InstanceView], lengths: Sequence[int]
    ) -> tuple[RouterState, list[RoleChange]]:
        if self._point.pinned_tokens is not None or len(lengths) < self.config.min_samples:
            return self.state, []
        self._workload = EmpiricalLengths(tuple(max(int(n), 1) for n in lengths))
        self._plan = self._solve(self._solved_gbps)
        assert self._plan.n_p is not None
        _, current = best_threshold_for_split(self._plan, self.n_p)
        changes: list[RoleChange] = []
        delta = self._plan.n_p - self.n_p
        gains = self._plan.throughput_rps > (1 + self.config.min_gain) * current
        if gains and self._queues_ask(instances, delta):
            changes = self._conversions(instances, delta)
            self.n_p += sum(1 if ch.to_role == "prefill" else -1 for ch in changes)
        if not changes and max(self._queued_seconds(instances)) <= self.config.queue_slack_s:
            return self.state, []  # light load: the t in force serves; the planner's is for Λ_max
        self.t_solved = self._threshold()
        self.t_plan = self._clamp(self.t_solved)
        self.state = RouterState(self._hold(self.t_solved), self._mode_out(), self._costs)
        return self.state, changes

    def not_applied(self, change: RoleChange) -> None:
        """A role change the caller could not apply: the split steered from is unchanged."""
        self.n_p -= 1 if change.to_role == "prefill" else -1

    def _smooth(self, link: LinkView) -> LinkView:
        w, old = self.config.egress_smoothing, self.egress
        self.egress = dataclasses.replace(
            link,
            goodput_gbps=w * link.goodput_gbps + (1 - w) * old.goodput_gbps,
            utilization=w * link.utilization + (1 - w) * old.utilization,
        )
        return self.egress

    def _path_costs(self, remote_s: float, local_s: float) -> PathCosts:
        headroom_gbps = self.egress.capacity_gbps * max(1.0 - self.egress.utilization, 0.0)
        pull_s_per_token = (
            self._kv_bits_per_token / (headroom_gbps * 1e9) if headroom_gbps > 0 else float("inf")
        )
        waits = {self.prfaas_cluster: remote_s, self.pd_cluster: local_s}
        return PathCosts(self._prefill_models, waits, pull_s_per_token)

    def _clamp(self, t: float) -> float:
        bounds = self._point.bounds
        return t if bounds is None else min(max(t, bounds[0]), bounds[1])

    def _hold(self, t: float) -> float:
        """The t the router gets: the pinned one, else ``t`` within the bounds."""
        pinned = self._point.pinned_tokens
        return pinned if pinned is not None else self._clamp(t)

    def _mode_out(self) -> Mode:
        return self._mode if self.config.adapt_mode else self._point.mode

    def _solve(self, bandwidth_gbps: float, unbounded_decode: bool = False) -> PlanResult:
        deployment = dataclasses.replace(self._deployment, bandwidth_gbps=max(bandwidth_gbps, 1e-6))
        if unbounded_decode:
            deployment = dataclasses.replace(deployment, decode=DecodeSpec(10**9, 1.0))
        step = self.config.threshold_step_tokens
        return plan(deployment, self._workload, self.output_tokens, step)

    def _threshold(self) -> float:
        """Best t for the current split. With the split fixed, decode capacity does not
        depend on t, so t is solved with decode left out: otherwise, whenever decode binds,
        every t ties and the tie-break would pick the lowest, sending all traffic remote."""
        unbounded = self._solve(self._solved_gbps, unbounded_decode=True)
        return best_threshold_for_split(unbounded, self.n_p)[0]

    def _queued_seconds(self, instances: Sequence[InstanceView]) -> tuple[float, float]:
        """Queued prefill work per path in seconds: tokens over the side's token rate."""
        result = []
        for cluster, length in (
            (self.prfaas_cluster, self._plan.l_long_tokens),
            (self.pd_cluster, self._plan.l_short_tokens),
        ):
            group = [i for i in instances if i.cluster == cluster and i.role == "prefill"]
            if not group or not length:
                result.append(0.0)
                continue
            profile = (
                self._deployment.prfaas_profile
                if cluster == self.prfaas_cluster
                else self._deployment.pd_prefill_profile
            )
            tokens_per_s = length / float(profile.prefill_s(np.array([length]))[0])
            queued = sum(i.queued_tokens for i in group)
            result.append(queued / (len(group) * tokens_per_s))
        return result[0], result[1]

    def _queues_ask(self, instances: Sequence[InstanceView], delta: int) -> bool:
        """Whether something asks for the conversion: more PD prefill instances (``delta``
        > 0) while PD-P prefills queue beyond ``queue_slack_s`` or while the measured link
        capacity is more than ``bandwidth_change`` below the cap (a dip: the gain comes from
        the link, and waiting for the queue costs the requests that build it); more decode
        instances while decode slots are all taken, or while the split holds more PD prefill
        instances than it started with and PD-P does not queue (a dip's are given back).
        A planner gain alone is about capacity; under light load a conversion only costs a
        drained instance and a cold cache, and more PD-P capacity moves work to the slower
        cluster."""
        c = self.config
        local_s = self._queued_seconds(instances)[1]
        if delta > 0:
            dipped = self._solved_gbps < (1 - c.bandwidth_change) * self._deployment.bandwidth_gbps
            return local_s > c.queue_slack_s or dipped
        if delta < 0 and self.n_p > self._deployed_n_p and local_s <= c.queue_slack_s:
            return True  # the pressure that took decode instances is gone: give them back
        decodes = [i for i in instances if i.cluster == self.pd_cluster and i.role == "decode"]
        slots = self._deployment.decode.max_batch_size * len(decodes)
        return delta < 0 and sum(i.load for i in decodes) >= slots > 0

    def _conversions(self, instances: Sequence[InstanceView], delta: int) -> list[RoleChange]:
        """``delta`` > 0: decode → prefill; < 0: prefill → decode; least loaded first."""
        from_role: Role = "decode" if delta > 0 else "prefill"
        to_role: Role = "prefill" if delta > 0 else "decode"
        group = [
            i
            for i in instances
            if i.cluster == self.pd_cluster and i.role == from_role and i.healthy
        ]
        group.sort(key=lambda i: (i.load, i.name))
        return [RoleChange(i.name, to_role) for i in group[: min(abs(delta), len(group) - 1)]]


def _time_model(profile: PrefillProfile, max_tokens: int) -> PrefillTimeModel:
    return PrefillTimeModel.sampled(
        lambda n: float(profile.prefill_s(np.array([float(n)]))[0]), max_tokens
    )


def _kv_bits_per_token(profile: PrefillProfile, max_tokens: int) -> float:
    """The KV size's slope (bits per token); 0 for a profile without KV sizes."""
    try:
        size = profile.kv_bytes(np.array([1.0, float(max_tokens)]))
    except ValueError:
        return 0.0
    return float(size[1] - size[0]) * 8 / (max_tokens - 1)
