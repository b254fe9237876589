"""The live dual-timescale control loop: ``router.control.Controller`` on the gateway's view.

Every ``short_interval_s``: the fleet's instances (queued prompt tokens from heartbeats), the
PrfaaS → PD link as the PrfaaS instances measured it and reported in their heartbeats (egress
rate, capacity estimate, backlogged share: ``router.link_state.measured_link``, the rule the
simulator applies to its own links) → ``Controller.short_tick`` → a new ``RouterState`` installed
in the router (replaced whole). Every ``long_interval_s``: ``Controller.long_tick`` on the
incremental lengths the router observed → a re-planned t and role changes, applied one at a
time by draining the worker and switching it (``roles.switch_role``, as
``/internal/role``); a change that fails goes back to the controller (``not_applied``).

The operating-point rules (bounds, a pinned t, the configured mode, egress smoothing) are the
controller's (``OperatingPoint``), so the simulator runs them too; this loop only measures,
applies and reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prfaas.deploy.cluster_metrics import link_reports
from prfaas.deploy.profiling import PlannerInputs, ThresholdChoice, clamp_reason
from prfaas.deploy.roles import RoleSwitchError
from prfaas.deploy.specs import ControlSpec, PolicySpec
from prfaas.deploy.ttft_estimate import measured_choice
from prfaas.gateway.fleet import WorkerFleet
from prfaas.messages import Role, WorkerInfo
from prfaas.router.control import ControlConfig, Controller, OperatingPoint, RoleChange
from prfaas.router.instance_choice import EstimatedTtft
from prfaas.router.link_state import measured_link
from prfaas.router.router import Router
from prfaas.router.types import LinkView, Mode, RouterState

logger = logging.getLogger(__name__)

SwitchRole = Callable[[str, Role], Awaitable[WorkerInfo]]


class ControlLoop:
    def __init__(
        self,
        spec: ControlSpec,
        policy: PolicySpec,
        router: Router,
        fleet: WorkerFleet,
        switch_role: SwitchRole,
    ) -> None:
        self.spec, self.router, self.fleet = spec, router, fleet
        self.pinned = policy.threshold_tokens
        self.mode: Mode = policy.mode
        self._switch_role = switch_role
        self.choice: ThresholdChoice | None = None
        self.controller: Controller | None = None
        self.inputs: PlannerInputs | None = None
        self.applied_changes: list[RoleChange] = []
        self.short_ticks = self.long_ticks = 0
        self._begun = asyncio.Event()

    # ---- start-up --------------------------------------------------------------------------

    def begin(self, choice: ThresholdChoice, inputs: PlannerInputs | None) -> None:
        """Install the start-up t; with planner inputs, build the controller and let ``run``
        tick. The controller starts at the deployed split and at the applied t."""
        self.choice, self.inputs = choice, inputs
        self.router.state = RouterState(choice.applied_tokens, self.mode)
        ttft = self.router.instance_choice
        if isinstance(ttft, EstimatedTtft) and choice.measured:
            links = (
                {} if inputs is None else {inputs.prfaas_cluster: inputs.deployment.bandwidth_gbps}
            )
            self.router.instance_choice = measured_choice(
                choice.measured, links, ttft.balance_factor, base=ttft
            )
        if inputs is not None and self.spec.enabled:
            config = ControlConfig(
                short_interval_s=self.spec.short_interval_s,
                long_interval_s=self.spec.long_interval_s,
                threshold_step_tokens=inputs.step_tokens,
                adapt_mode=self.spec.adapt_mode,
                egress_smoothing=self.spec.egress_smoothing,
            )
            solved = choice.solved_tokens
            start = OperatingPoint(
                n_p=inputs.n_p,
                threshold_tokens=choice.applied_tokens,
                t_plan=choice.applied_tokens if solved is None else solved,
                mode=self.mode,
                pinned_tokens=self.pinned,
                bounds=inputs.bounds,
            )
            try:
                self.controller = Controller(
                    config,
                    inputs.deployment,
                    inputs.workload,
                    self.spec.output_tokens,
                    inputs.pd_cluster,
                    inputs.prfaas_cluster,
                    start,
                )
            except ValueError as e:  # e.g. a PD cluster too small to split
                logger.warning("no control loop: %s", e)
        self._begun.set()

    # ---- the two timescales ----------------------------------------------------------------

    def short_tick(self) -> RouterState:
        c = self.controller
        assert c is not None, "begin() with planner inputs first"
        self.router.state = c.short_tick(self.fleet.instances(), self._egress(c))
        self.short_ticks += 1
        return self.router.state

    async def long_tick(self) -> list[RoleChange]:
        """Re-plan on the observed lengths; apply the role changes; the applied ones."""
        c = self.controller
        assert c is not None, "begin() with planner inputs first"
        self.long_ticks += 1
        lengths = list(self.router.observed_lengths)
        self.router.state, changes = c.long_tick(self.fleet.instances(), lengths)
        replanned = len(lengths) >= c.config.min_samples and self.pinned is None
        if replanned and self.choice is not None:
            reason = f"re-planned on {len(lengths)} observed prompt lengths"
            clamped = self.inputs and clamp_reason(c.t_solved, self.inputs.bounds)
            self.choice = dataclasses.replace(
                self.choice,
                applied_tokens=self.router.state.threshold_tokens,
                solved_tokens=c.t_solved,
                reason=f"{reason}; {clamped}" if clamped else reason,
            )
        applied: list[RoleChange] = []
        for change in changes:
            if self.spec.role_changes and await self._apply(change):
                applied.append(change)
            else:
                c.not_applied(change)
        self.applied_changes.extend(applied)
        return applied

    async def _apply(self, change: RoleChange) -> bool:
        logger.info("control loop: converting %s to %s", change.instance, change.to_role)
        try:
            await self._switch_role(change.instance, change.to_role)
        except RoleSwitchError as e:
            logger.warning("role change of %s failed: %s", change.instance, e)
            return False
        return True

    def _egress(self, c: Controller) -> LinkView:
        """The PrfaaS → PD link now, as its sending instances measured it over their last
        window (their ``LinkReport``s: rate, capacity estimate, backlogged share; the same
        rule as the simulator's, ``measured_link``), within the configured cap; unsmoothed."""
        reports = link_reports(self.fleet, c.prfaas_cluster)
        cap = self.inputs.deployment.bandwidth_gbps if self.inputs else c.egress.capacity_gbps
        return measured_link(c.prfaas_cluster, c.pd_cluster, cap, reports)

    # ---- the background task (the gateway's lifespan runs it) ------------------------------

    async def run(self) -> None:
        await self._begun.wait()
        if self.controller is None:
            return
        await asyncio.gather(
            self._every(self.spec.short_interval_s, self._short),
            self._every(self.spec.long_interval_s, self.long_tick),
        )

    async def _short(self) -> None:  # ``_every`` awaits its tick
        self.short_tick()

    async def _every(self, interval_s: float, tick: Callable[[], Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await tick()
            except Exception:
                logger.exception("control loop tick failed; it keeps running")

    # ---- /status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        choice = self.choice
        c = self.controller
        return {
            "threshold_source": None if choice is None else choice.source,
            "threshold": None if choice is None else choice.to_json(),
            "control": {
                "running": c is not None,
                "short_interval_s": self.spec.short_interval_s,
                "long_interval_s": self.spec.long_interval_s,
                "short_ticks": self.short_ticks,
                "long_ticks": self.long_ticks,
                "t_plan_tokens": None if c is None else c.t_plan,
                "t_solved_tokens": None if c is None else c.t_solved,
                "t_clamp": None
                if c is None or self.inputs is None
                else clamp_reason(c.t_solved, self.inputs.bounds),
                "n_p": None if c is None else c.n_p,
                "egress": None if c is None else dataclasses.asdict(c.egress),
                "role_changes": [f"{ch.instance}->{ch.to_role}" for ch in self.applied_changes],
            },
        }


@contextlib.asynccontextmanager
async def running(*loops: Any) -> AsyncIterator[None]:
    """The gateway's lifespan: each loop's ``run()`` task lives as long as the server."""
    tasks = [asyncio.create_task(loop.run()) for loop in loops]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
