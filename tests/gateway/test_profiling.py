"""Start-up profiling → t, and the control loop's invariants, in plain Python.

Measurements are shaped like a CPU worker's (a fixed cost plus a per-token cost, a little
noise); the fleet is a real ``WorkerFleet`` fed with real ``WorkerInfo``/``Heartbeat``
messages, without worker processes. Role switches here go to a recorder: the real drain and
switch on a live worker is tests/serving/test_control_loop.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from prfaas.deploy.config import (
    DeployConfig,
    DeployConfigError,
    default_config,
    load_deploy_config,
)
from prfaas.deploy.control_loop import ControlLoop
from prfaas.deploy.profiling import (
    MeasuredPrefill,
    PlannerInputs,
    choose_threshold,
    planner_inputs,
    profile_deployment,
    profile_lengths,
    solve_threshold,
    threshold_bounds,
)
from prfaas.deploy.roles import RoleSwitchError
from prfaas.deploy.specs import LinkSpec
from prfaas.gateway.fleet import WorkerFleet
from prfaas.messages import Heartbeat, LinkReport, ProfileRequest, ProfileResult, Role, WorkerInfo
from prfaas.planner.throughput import DecodeSpec
from prfaas.router.kv_index import KvIndex
from prfaas.router.policies import PrfaasThreshold
from prfaas.router.router import Router, RouterConfig
from prfaas.router.types import RouterState

MAX_MODEL_LEN, BLOCK = 8192, 16
LENGTHS = (32, 128, 512, 1024, 2048)
KV_PER_TOKEN = 46_080  # bytes: 30 layers x 3 kv heads x 64 x (K + V) x float32
DECODE = DecodeSpec(8, 0.02)


def measured(cluster: str, scale: float = 1.0, noise: float = 0.0) -> MeasuredPrefill:
    rng = np.random.default_rng(0)
    times = [scale * (0.01 + 2.5e-5 * n) * (1 + noise * rng.uniform(-1, 1)) for n in LENGTHS]
    name = "pd-p-0" if cluster == "local" else "prfaas-0"
    return MeasuredPrefill(
        cluster, name, LENGTHS, tuple(times), tuple(KV_PER_TOKEN * n for n in LENGTHS)
    )


def deploy(rate_gbps: float | None = 1.0, **policy: object) -> DeployConfig:
    cfg = default_config()
    link = LinkSpec(src="remote", dst="local", rate_gbps=rate_gbps)
    return cfg.model_copy(update={"links": [link], "policy": cfg.policy.model_copy(update=policy)})


def inputs(rate_gbps: float | None = 1.0, prfaas_scale: float = 1.0) -> PlannerInputs:
    return planner_inputs(
        deploy(rate_gbps),
        measured("local"),
        measured("remote", prfaas_scale),
        DECODE,
        MAX_MODEL_LEN,
        BLOCK,
    )


def test_profile_lengths_stay_inside_the_context() -> None:
    assert profile_lengths(512, 16) == [32, 128, 256, 383, 511]  # spread to the context
    assert profile_lengths(MAX_MODEL_LEN, BLOCK) == [32, 512, 1024, 1536, 2048]  # capped
    assert threshold_bounds(512, 16) == (32.0, 384.0)


def attention_bound(n: float) -> float:
    """A prefill whose quadratic (attention) term dominates at long lengths."""
    return 1e-3 + 2e-5 * n + 3e-8 * n * n


def balanced_t(time_s: object, lo: float, hi: float, prfaas_per_pd: float) -> float:
    """The oracle, the paper's throughput model (eqs. 3-8) solved by hand: with uniform
    lengths on [lo, hi] and an ample link, each side serves N / (share · T(its mean length)),
    and Λ is largest where the two are equal: (t - lo)·T((lo + t)/2) = (hi - t)·T((t + hi)/2)
    / prfaas_per_pd (a fine grid, independent of the planner's search)."""
    t = np.linspace(lo, hi, 20001)
    f = np.vectorize(time_s)
    gap = (t - lo) * f((lo + t) / 2) - (hi - t) * f((t + hi) / 2) / prfaas_per_pd
    return float(t[np.argmin(np.abs(gap))])


def test_the_unclamped_t_is_the_one_the_measured_profile_implies() -> None:
    """One PD prefill instance, two PrfaaS ones, the same attention-bound T(l), measured at
    the start-up lengths, an ample link: the solved t is the balance point (≈ 0.72 of the
    context for this T, against ≈ 0.58 for a linear T: a profile cut at 512 tokens and
    extrapolated along a line lands there and fails this)."""
    lengths = tuple(profile_lengths(MAX_MODEL_LEN, BLOCK))
    times = tuple(attention_bound(n) for n in lengths)
    kv = tuple(KV_PER_TOKEN * n for n in lengths)
    local = MeasuredPrefill("local", "pd-p-0", lengths, times, kv)
    remote = MeasuredPrefill("remote", "prfaas-0", lengths, times, kv)
    cfg = deploy(100.0)
    prfaas = cfg.clusters[1].model_copy(
        update={
            "instances": [
                cfg.clusters[1].instances[0].model_copy(update={"name": n})
                for n in ("prfaas-0", "prfaas-1")
            ]
        }
    )
    cfg = cfg.model_copy(update={"clusters": [cfg.clusters[0], prfaas]})
    planned = planner_inputs(cfg, local, remote, DECODE, MAX_MODEL_LEN, BLOCK)
    choice = choose_threshold(planned, DECODE, 256)
    expected = balanced_t(attention_bound, lengths[0], MAX_MODEL_LEN, 2.0)
    assert 0.65 * MAX_MODEL_LEN < expected < 0.75 * MAX_MODEL_LEN
    assert choice.solved_tokens == pytest.approx(expected, abs=planned.step_tokens)
    assert choice.applied_tokens == choice.solved_tokens  # inside the bounds: not a clamp
    assert choice.to_json()["clamped"] is False
    assert choice.reason == "planner optimum on the measured profiles"


def test_noisy_measurements_become_a_profile_that_never_falls_with_length() -> None:
    m = measured("local", noise=0.5)
    assert any(b < a for a, b in zip(m.prefill_s, m.prefill_s[1:], strict=False))
    profile = m.planner_profile()
    grid = np.linspace(LENGTHS[0], MAX_MODEL_LEN, 200)
    assert np.all(np.diff(profile.prefill_s(grid)) >= 0)
    assert profile.kv_bytes(np.array([1000.0]))[0] == pytest.approx(1000 * KV_PER_TOKEN)


def test_equal_clusters_behind_a_narrow_link_are_kept_inside_the_context() -> None:
    """Both clusters measure the same and 1 Gbps carries ~2.7K tokens of KV/s against ~40K
    tokens/s of prefill: the planner keeps everything local; t is clamped so that both
    paths serve, and the choice says why."""
    choice = choose_threshold(inputs(1.0), DECODE, 256)
    hi = threshold_bounds(MAX_MODEL_LEN, BLOCK)[1]
    assert choice.source == "profiled"
    assert choice.solved_tokens is not None and choice.solved_tokens > hi
    assert choice.applied_tokens == hi
    assert "beyond 3/4 of the context" in choice.reason and "both paths" in choice.reason
    assert choice.to_json()["prefill_s"]["remote"]["instance"] == "prfaas-0"


def test_with_an_ample_link_t_splits_the_work_and_a_faster_prfaas_takes_more() -> None:
    equal = choose_threshold(inputs(100.0), DECODE, 256)
    faster = choose_threshold(inputs(100.0, prfaas_scale=0.25), DECODE, 256)
    lo, hi = threshold_bounds(MAX_MODEL_LEN, BLOCK)
    assert lo < equal.applied_tokens == equal.solved_tokens < hi
    # Equal speeds, uniform lengths, near-linear time: half the work on each side, at
    # t ≈ max / sqrt(2) (the planner's grid is 128 tokens wide).
    assert equal.applied_tokens == pytest.approx(MAX_MODEL_LEN / 2**0.5, abs=400)
    assert faster.applied_tokens < equal.applied_tokens - 1000


def test_a_narrower_link_never_lowers_t() -> None:
    ts = [solve_threshold(inputs(rate, prfaas_scale=0.25), 256) for rate in (100.0, 10.0, 3.0)]
    assert ts == sorted(ts) and ts[-1] > ts[0]


def test_a_pinned_threshold_is_kept_without_profiling() -> None:
    fleet = WorkerFleet({"local": "pd", "remote": "prfaas"}, KvIndex())  # nobody registered
    choice, planned = asyncio.run(
        profile_deployment(deploy(threshold_tokens=700), fleet, "token", MAX_MODEL_LEN, BLOCK)
    )
    assert (choice.source, choice.applied_tokens, planned) == ("pinned", 700.0, None)


def test_failed_profiling_falls_back_to_the_guess_and_says_so() -> None:
    fleet = WorkerFleet({"local": "pd", "remote": "prfaas"}, KvIndex())
    choice, planned = asyncio.run(
        profile_deployment(deploy(), fleet, "token", MAX_MODEL_LEN, BLOCK)
    )
    assert choice.source == "default" and planned is None
    assert choice.applied_tokens == MAX_MODEL_LEN // 8
    assert "profiling failed" in choice.reason and "no healthy prefill" in choice.reason


def test_profile_messages_are_bounded_and_round_trip() -> None:
    req = ProfileRequest(num_tokens=[32, 64], repeats=2, decode_batch=4)
    assert ProfileRequest.decode(req.encode()) == req
    for bad in ({"num_tokens": []}, {"num_tokens": [0]}, {"num_tokens": list(range(1, 18))}):
        with pytest.raises(ValidationError):
            ProfileRequest.model_validate(bad)
    with pytest.raises(ValidationError):
        ProfileRequest(num_tokens=[8], repeats=100)
    result = ProfileResult(num_tokens=[32], prefill_s=[0.01], kv_bytes=[1024])
    assert ProfileResult.decode(result.encode()) == result
    with pytest.raises(ValidationError):
        ProfileResult(num_tokens=[32], prefill_s=[0.0], kv_bytes=[1])
    hb = Heartbeat(
        name="w", epoch=1, role="prefill", num_waiting=0, num_running=0, kv_usage=0, fallbacks=0
    )
    assert hb.queued_tokens == 0  # a worker that does not report it
    with pytest.raises(ValidationError):
        Heartbeat.model_validate({**hb.model_dump(), "queued_tokens": -1})


# ---- the control loop ----------------------------------------------------------------------

NAMES = {
    "pd-p-0": ("local", "prefill"),
    "pd-d-0": ("local", "decode"),
    "pd-d-1": ("local", "decode"),
    "prfaas-0": ("remote", "prefill"),
}


class Recorder:
    """Stands in for the drain-and-switch call; ``fail`` makes it refuse."""

    def __init__(self, fleet: WorkerFleet, fail: bool = False) -> None:
        self.fleet, self.fail, self.calls = fleet, fail, list[tuple[str, Role]]()

    async def __call__(self, name: str, role: Role) -> WorkerInfo:
        self.calls.append((name, role))
        if self.fail:
            raise RoleSwitchError(502, "worker answered 500")
        info = self.fleet.workers[name].info.model_copy(update={"role": role, "epoch": 99})
        self.fleet.register(info)
        return info


def fleet() -> WorkerFleet:
    f = WorkerFleet({"local": "pd", "remote": "prfaas"}, KvIndex())
    for name, (cluster, role) in NAMES.items():
        f.register(
            WorkerInfo(
                name=name,
                cluster=cluster,
                role=role,
                http_url="http://x",
                kv_host="x",
                kv_port=1,
                fingerprint="f",
                model_name="m",
                max_model_len=MAX_MODEL_LEN,
                block_size=BLOCK,
                epoch=1,
            )
        )
    return f


def backlog(
    f: WorkerFleet, name: str, queued_tokens: int, links: list[LinkReport] | None = None
) -> None:
    record = f.workers[name]
    assert f.heartbeat(
        Heartbeat(
            name=name,
            epoch=record.info.epoch,
            role=record.info.role,
            num_waiting=1,
            num_running=0,
            kv_usage=0.0,
            fallbacks=0,
            queued_tokens=queued_tokens,
            links=links or [],
        )
    )


def loop(
    f: WorkerFleet,
    fail: bool = False,
    threshold_tokens: int | None = None,
    adapt_mode: bool = False,
) -> tuple[ControlLoop, Recorder]:
    """A loop over ``NAMES`` behind a 1 Gbps link, begun as start-up would begin it."""
    cfg = DeployConfig.model_validate(
        {
            "clusters": [
                {
                    "name": cluster,
                    "kind": kind,
                    "instances": [
                        {"name": n, "role": r} for n, (c, r) in NAMES.items() if c == cluster
                    ],
                }
                for cluster, kind in (("local", "pd"), ("remote", "prfaas"))
            ],
            # adapt_mode may switch to abundant mode: pulls then need the local->remote link.
            "links": [
                {"src": "remote", "dst": "local", "rate_gbps": 1.0},
                {"src": "local", "dst": "remote"},
            ],
            "policy": {
                "threshold_tokens": threshold_tokens,
                "control": {"output_tokens": 2, "adapt_mode": adapt_mode},
            },
        }
    )
    policy = cfg.policy
    router = Router(RouterConfig(BLOCK), PrfaasThreshold(), f, KvIndex(), RouterState(1000.0))
    recorder = Recorder(f, fail)
    control = ControlLoop(policy.control, policy, router, f, recorder)
    planned = planner_inputs(
        cfg, measured("local"), measured("remote"), DECODE, MAX_MODEL_LEN, BLOCK
    )
    choice = choose_threshold(planned, DECODE, 2)
    if threshold_tokens is not None:
        choice = dataclasses.replace(
            choice, applied_tokens=float(threshold_tokens), source="pinned", solved_tokens=None
        )
    control.begin(choice, planned)
    return control, recorder


def test_backlogs_move_t_but_never_out_of_bounds() -> None:
    f = fleet()
    control, _ = loop(f)
    lo, hi = threshold_bounds(MAX_MODEL_LEN, BLOCK)
    t0 = control.router.state.threshold_tokens
    assert t0 == hi  # 1 Gbps: the planner wants all local, clamped
    for _ in range(50):
        backlog(f, "pd-p-0", 10**9)
        control.short_tick()
    low = control.router.state.threshold_tokens
    assert lo <= low < t0
    for _ in range(50):
        backlog(f, "pd-p-0", 0)
        backlog(f, "prfaas-0", 10**9)
        control.short_tick()
    assert control.router.state.threshold_tokens == hi  # raised, and held at the bound
    assert control.controller is not None and control.controller.state.threshold_tokens == hi


def test_a_pinned_threshold_never_moves_and_no_role_changes() -> None:
    f = fleet()
    control, recorder = loop(f, threshold_tokens=500)
    for _ in range(20):
        backlog(f, "pd-p-0", 10**9)
        control.short_tick()
    assert control.router.state.threshold_tokens == 500
    control.router.observed_lengths.extend([4000] * 300)
    assert asyncio.run(control.long_tick()) == [] and recorder.calls == []


def test_the_mode_follows_link_use_only_when_asked() -> None:
    f = fleet()
    fixed, _ = loop(f)
    adaptive, _ = loop(f, adapt_mode=True)
    assert fixed.short_tick().mode == "scarce"  # the configured mode holds
    assert adaptive.short_tick().mode == "abundant"  # an idle link: utilization 0 < 0.4
    # The PrfaaS instance reports 8 Gbps on the wire over a 1 Gbps cap (its LinkMonitor).
    busy = LinkReport(
        link="remote->local",
        bytes_sent=10**9,
        rate_gbps=8.0,
        goodput_gbps=8.0,
        backlog_bytes=0,
        transfers_open=1,
        cap_gbps=1.0,
    )
    backlog(f, "prfaas-0", 0, [busy])
    assert adaptive.short_tick().mode == "scarce"
    assert adaptive.controller is not None
    assert adaptive.controller.egress.utilization == pytest.approx(4.0)  # smoothed: 0.5 * 8
    assert fixed.short_tick().mode == "scarce"


def test_long_tick_applies_role_changes_and_counts_only_those_applied() -> None:
    lengths = [2000 + (37 * i) % 4000 for i in range(300)]
    f = fleet()
    control, recorder = loop(f)
    control.router.observed_lengths.extend(lengths)
    assert asyncio.run(control.long_tick()) == []  # no PD-P queue: nothing asks for more
    backlog(f, "pd-p-0", 10**6)  # prompts queue at PD-P
    changes = asyncio.run(control.long_tick())
    assert [(c.instance, c.to_role) for c in changes] == recorder.calls == [("pd-d-0", "prefill")]
    assert f.workers["pd-d-0"].info.role == "prefill"
    assert control.controller is not None and control.controller.n_p == 2
    lo, hi = threshold_bounds(MAX_MODEL_LEN, BLOCK)
    assert lo <= control.router.state.threshold_tokens <= hi

    f = fleet()
    control, recorder = loop(f, fail=True)
    control.router.observed_lengths.extend(lengths)
    backlog(f, "pd-p-0", 10**6)
    assert asyncio.run(control.long_tick()) == []
    assert recorder.calls == [("pd-d-0", "prefill")]
    assert control.controller is not None and control.controller.n_p == 1  # not applied
    assert f.workers["pd-d-0"].info.role == "decode"


def test_control_settings_are_validated_at_the_edge(tmp_path: Path) -> None:
    base = default_config().model_dump(mode="json")
    base["policy"]["control"] = {"short_interval_s": 0, "bogus": 1}
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(base))
    with pytest.raises(DeployConfigError) as err:
        load_deploy_config(path)
    assert "policy.control.short_interval_s" in str(err.value)
    assert "policy.control.bogus" in str(err.value)
    control = default_config().policy.control
    assert (control.enabled, control.short_interval_s, control.long_interval_s) == (True, 1, 300)
    assert control.role_changes and not control.adapt_mode
