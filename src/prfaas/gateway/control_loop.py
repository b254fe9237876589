"""The live dual-timescale control loop: ``router.control.Controller`` on the gateway's view.

Every ``short_interval_s``: the fleet's instances (queued prompt tokens from heartbeats), the
PrfaaS → PD link (configured cap, egress measured from the KV bytes delivered since the
last tick) → ``Controller.short_tick`` → a new ``RouterState`` installed in the router
(replaced whole). Every ``long_interval_s``: ``Controller.long_tick`` on the incremental
lengths the router observed → a re-planned t and role changes, applied one at a time by
draining the worker and switching it (``internal.switch_role``, as ``/internal/role``).

Invariants kept here, outside the controller's decisions:
- applied t stays inside ``bounds`` (``profiling.threshold_bounds``), and so does the
  controller's own t, since it nudges from its last state;
- a pinned t is never changed, and role changes are not applied (the operator owns the
  operating point); without ``adapt_mode`` the configured mode holds;
- the controller's N_p counts only role changes that were applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prfaas.gateway.deploy_config import ControlSpec, PolicySpec
from prfaas.gateway.fleet import WorkerFleet
from prfaas.gateway.internal import RoleSwitchError
from prfaas.gateway.profiling import PlannerInputs, ThresholdChoice, clamp
from prfaas.messages import Role, WorkerInfo
from prfaas.router.control import ControlConfig, Controller, RoleChange
from prfaas.router.router import Router
from prfaas.router.types import LinkView, Mode, RouterState

logger = logging.getLogger(__name__)

EGRESS_EWMA = 0.5  # weight of the latest interval in the measured egress rate
SwitchRole = Callable[[str, Role], Awaitable[WorkerInfo]]


class ControlLoop:
    def __init__(
        self,
        spec: ControlSpec,
        policy: PolicySpec,
        router: Router,
        fleet: WorkerFleet,
        wire_bytes: dict[str, int],
        switch_role: SwitchRole,
    ) -> None:
        self.spec, self.router, self.fleet = spec, router, fleet
        self.pinned = policy.threshold_tokens
        self.mode: Mode = policy.mode
        self._wire_bytes = wire_bytes  # per source cluster, since start (``ClusterMetrics``)
        self._switch_role = switch_role
        self.choice: ThresholdChoice | None = None
        self.controller: Controller | None = None
        self.inputs: PlannerInputs | None = None
        self.egress = LinkView("", "", 0.0)
        self.applied_changes: list[RoleChange] = []
        self.short_ticks = self.long_ticks = 0
        self._last_bytes, self._last_s = 0, time.monotonic()
        self._begun = asyncio.Event()

    # ---- start-up --------------------------------------------------------------------------

    def begin(self, choice: ThresholdChoice, inputs: PlannerInputs | None) -> None:
        """Install the start-up t; with planner inputs, build the controller and let ``run``
        tick. The controller starts at the deployed split and at the applied t."""
        self.choice, self.inputs = choice, inputs
        self.router.state = RouterState(choice.applied_tokens, self.mode)
        if inputs is not None and self.spec.enabled:
            config = ControlConfig(
                short_interval_s=self.spec.short_interval_s,
                long_interval_s=self.spec.long_interval_s,
                threshold_step_tokens=inputs.step_tokens,
            )
            try:
                c = Controller(
                    config,
                    inputs.deployment,
                    inputs.workload,
                    self.spec.output_tokens,
                    inputs.pd_cluster,
                    inputs.prfaas_cluster,
                )
            except ValueError as e:  # e.g. a PD cluster too small to split
                logger.warning("no control loop: %s", e)
                self._begun.set()
                return
            c.n_p = inputs.n_p
            solved = choice.solved_tokens
            c.t_plan = clamp(choice.applied_tokens if solved is None else solved, inputs.bounds)
            c.state = RouterState(choice.applied_tokens, self.mode)
            self.controller = c
            self.egress = LinkView(
                inputs.prfaas_cluster, inputs.pd_cluster, inputs.deployment.bandwidth_gbps
            )
        self._begun.set()

    # ---- the two timescales ----------------------------------------------------------------

    def short_tick(self) -> RouterState:
        c, inputs = self.controller, self.inputs
        assert c is not None and inputs is not None, "begin() with planner inputs first"
        self.egress = self._measure_egress()
        state = c.short_tick(self.fleet.instances(), self.egress)
        mode = state.mode if self.spec.adapt_mode else self.mode
        t = self.pinned if self.pinned is not None else clamp(state.threshold_tokens, inputs.bounds)
        c.state = RouterState(t, state.mode)
        self.router.state = RouterState(t, mode)
        self.short_ticks += 1
        return self.router.state

    async def long_tick(self) -> list[RoleChange]:
        """Re-plan on the observed lengths; apply the role changes; the applied ones."""
        c, inputs = self.controller, self.inputs
        assert c is not None and inputs is not None, "begin() with planner inputs first"
        self.long_ticks += 1
        if self.pinned is not None:
            return []
        lengths = list(self.router.observed_lengths)
        state, changes = c.long_tick(self.fleet.instances(), lengths)
        t = clamp(state.threshold_tokens, inputs.bounds)
        if len(lengths) >= c.config.min_samples and self.choice is not None:
            self.choice = dataclasses.replace(
                self.choice,
                applied_tokens=t,
                solved_tokens=c.t_plan,
                reason=f"re-planned on {len(lengths)} observed prompt lengths",
            )
        c.t_plan = clamp(c.t_plan, inputs.bounds)
        c.state = RouterState(t, state.mode)
        self.router.state = RouterState(t, state.mode if self.spec.adapt_mode else self.mode)
        applied: list[RoleChange] = []
        for change in changes:
            if self.spec.role_changes and await self._apply(change):
                applied.append(change)
            else:  # not applied: the split the controller steers from is unchanged
                c.n_p -= 1 if change.to_role == "prefill" else -1
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

    def _measure_egress(self) -> LinkView:
        """PrfaaS → PD egress over the last interval (KV wire bytes delivered), smoothed."""
        now = time.monotonic()
        total = self._wire_bytes.get(self.egress.src, 0)
        gbps = (total - self._last_bytes) * 8 / max(now - self._last_s, 1e-3) / 1e9
        self._last_bytes, self._last_s = total, now
        goodput = EGRESS_EWMA * gbps + (1 - EGRESS_EWMA) * self.egress.goodput_gbps
        cap = self.egress.capacity_gbps
        return dataclasses.replace(self.egress, goodput_gbps=goodput, utilization=goodput / cap)

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
                "n_p": None if c is None else c.n_p,
                "egress": dataclasses.asdict(self.egress),
                "role_changes": [f"{ch.instance}->{ch.to_role}" for ch in self.applied_changes],
            },
        }


@contextlib.asynccontextmanager
async def running(loop: ControlLoop) -> AsyncIterator[None]:
    """The gateway's lifespan: the loop's task lives as long as the server."""
    task = asyncio.create_task(loop.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
