"""A bandwidth dip on a live deployment: the control loop sees it through the sender's own
measurement and moves t.

Real processes on a tiny checkpoint with a heavy KV cache (8 layers of 4 KV heads: 4 KiB per
token, so that the traffic's KV, about 80 Mbit/s, fits 1 Gbit/s and not 50 Mbit/s), a PD
cluster of one prefill and one decode instance, two PrfaaS prefill instances (so that t
starts below its upper bound), the PrfaaS → PD link through the emulator at 1 Gbit/s, steady
traffic of prompts spread over the context. At run time the emulator's rate drops to
50 Mbit/s (the operator route, ``POST /internal/link/remote->local``), then comes back. The
gateway knows only what the PrfaaS worker measures and reports in its heartbeats.

Timing-sensitive: on a host whose cores are heavily oversubscribed, acknowledgements delayed
by CPU starvation read as link time and the 1 Gbit/s estimate sags (docs/router.md).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import make_tiny_checkpoint
from tests.deploy_helper import pd_cluster, prfaas_cluster, shared_cache, sized_for_tests
from tests.serving.conftest import CLUSTER_TOKEN
from tests.serving.test_control_loop import BLOCK, Gateway

from prfaas.config import EngineConfig
from prfaas.deploy.config import DeployConfig
from prfaas.deploy.launcher import free_port
from prfaas.gateway.middleware import ROUTE_HEADER
from prfaas.messages import TOKEN_HEADER, LinkControl
from prfaas.router.control import Controller
from prfaas.sim.replay import ControlSample, LiveScenario, RecordedRequest, compare, replay

MAX_MODEL_LEN = 512
NUM_LAYERS = 8
KV_HEADS = 4
DIPPED_GBPS = 0.05


def config(model: Path) -> DeployConfig:
    return DeployConfig.model_validate(
        sized_for_tests(
            {
                "model": str(model),
                "served_model_name": "tiny",
                "port": free_port(),
                "max_model_len": MAX_MODEL_LEN,
                "kv_deadline_s": 15.0,
                "clusters": [pd_cluster(1, 1), prfaas_cluster(2)],
                "links": [{"src": "remote", "dst": "local", "rate_gbps": 1.0, "rtt_ms": 0.0}],
                "policy": {
                    "control": {
                        "short_interval_s": 1.0,
                        "long_interval_s": 3600,
                        "output_tokens": 4,
                    }
                },
            }
        )
    )


def checkpoint(folder: Path, kv_heads: int = KV_HEADS) -> Path:
    return make_tiny_checkpoint(
        folder, "llama", num_hidden_layers=NUM_LAYERS, num_key_value_heads=kv_heads
    )


# Start-ups with t at its upper bound that the fixture retries (see ``gateway``).
BOUND_RETRIES = 2


def room_to_rise(gw: Gateway) -> bool:
    """Whether the start-up t is below 90 % of its upper bound, so that a dip can raise it."""
    control = gw.deployment.control
    return (
        control.inputs is not None
        and control.choice is not None
        and control.choice.applied_tokens < 0.9 * control.inputs.bounds[1]
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The deployment, its t profiled at start-up. The tiny model's prefills take tens of
    milliseconds, so the profile is noisy where the other tests load the cores: it has put t
    at its upper bound (the remote side measured 3x slower at 511 tokens), where no dip can
    raise it. That start-up is a precondition, not the behaviour under test: the deployment
    is started again, at most ``BOUND_RETRIES`` times, and the test still fails if t has no
    room."""
    tmp = tmp_path_factory.mktemp("dip")
    model = checkpoint(tmp / "model")
    with pytest.MonkeyPatch.context() as env:  # the in-process gateway reads them once
        env.setenv("PRFAAS_CLUSTER_TOKEN", CLUSTER_TOKEN)
        env.setenv("PRFAAS_CACHE_DIR", shared_cache(tmp))
        gw = Gateway(config(model), tmp / "logs")
        for attempt in range(BOUND_RETRIES):
            if room_to_rise(gw):
                break
            logging.getLogger(__name__).warning(
                "start-up t at its bound (%s); starting the deployment again",
                gw.deployment.control.choice,
            )
            gw.close()
            gw = Gateway(config(model), tmp / f"logs-{attempt + 1}")
    try:
        yield gw
    finally:
        gw.close()


@dataclass(frozen=True)
class Sent:
    """One request of the traffic: when it was sent and answered, its path and status, and
    the prompt and output tokens the gateway counted (0 when it failed)."""

    sent_s: float
    done_s: float
    path: str
    status: int
    prompt_tokens: int
    output_tokens: int


class Traffic:
    """Steady requests from a few client threads, prompt lengths cycling over the context."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url, self.stop = url, threading.Event()
        self.done: list[Sent] = []
        self.threads = [threading.Thread(target=self._run, args=(k,)) for k in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self, k: int) -> None:
        with httpx.Client(headers={"Authorization": "Bearer key"}, timeout=30) as client:
            i = k
            while not self.stop.is_set():
                n = 50 + (i * 137) % 450  # 50..499 tokens
                prompt = " ".join(f"w{3 + (i + j) % 250}" for j in range(n))
                body = {"model": "tiny", "prompt": prompt, "max_tokens": 2}
                sent_s = time.monotonic()
                r = client.post(self.url + "/v1/completions", json=body)
                path = r.headers.get(ROUTE_HEADER, "").split(" ")[0]
                usage = r.json().get("usage", {}) if r.status_code == 200 else {}
                self.done.append(
                    Sent(
                        sent_s,
                        time.monotonic(),
                        path,
                        r.status_code,
                        usage.get("prompt_tokens", 0),
                        usage.get("completion_tokens", 0),
                    )
                )
                i += 3

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def remote_share(run: DipRun, start_s: float, end_s: float) -> float:
    """Share of the requests answered in [start_s, end_s) that were prefilled remotely."""
    paths = [r.path for r in run.requests if start_s <= r.done_s < end_s]
    return sum(p == "prfaas" for p in paths) / max(len(paths), 1)


def set_rate(gw: Gateway, gbps: float) -> None:
    r = httpx.post(
        gw.url + "/internal/link/remote->local",
        content=LinkControl(rate_gbps=gbps).encode(),
        headers={TOKEN_HEADER: CLUSTER_TOKEN},
        timeout=10,
    )
    assert r.status_code == 200, r.text


Trace = list[tuple[float, float, float, int]]


def watch(gw: Gateway, seconds: float, trace: Trace) -> None:
    """Every 0.5 s: (time, the controller's capacity, t, local prefills so far)."""
    control, fleet = gw.deployment.control, gw.deployment.fleet
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        c = control.controller
        assert c is not None
        fallbacks = sum(r.fallbacks for r in fleet.workers.values())
        trace.append(
            (time.monotonic(), c.egress.capacity_gbps, c.state.threshold_tokens, fallbacks)
        )
        time.sleep(0.5)


def first_after(trace: Trace, start_s: float, ok: Any) -> float:
    """Seconds after ``start_s`` until the capacity first satisfies ``ok``."""
    return next(t - start_s for t, gbps, _, _ in trace if t >= start_s and ok(gbps))


@dataclass
class DipRun:
    """A live dip: monotonic times of the traffic's start, the dip and the restore; the
    controller's trace; the requests; failed prefill results; the controller as traffic
    began (a copy: the simulator's replay starts from it)."""

    start_s: float
    dip_s: float
    restore_s: float
    trace: Trace
    requests: list[Sent]
    errors: list[tuple[float, str]]  # (monotonic time, error) of failed prefill results
    controller: Controller


def run_dip(gw: Gateway, steady_s: float = 12, dip_s: float = 15, after_s: float = 15) -> DipRun:
    """Steady traffic at 1 Gbit/s for ``steady_s``, at 50 Mbit/s for ``dip_s``, restored for
    ``after_s``."""
    control = gw.deployment.control
    assert control.controller is not None, "the loop must run"
    errors: list[tuple[float, str]] = []
    backend = gw.deployment.backend
    on_prefill = backend.on_prefill

    def record(decision: Any, result: Any) -> None:
        if not result.ok:
            errors.append((time.monotonic(), result.error or ""))
        if on_prefill is not None:
            on_prefill(decision, result)

    async def snapshot() -> Controller:  # on the loop's thread: never mid-tick
        assert control.controller is not None
        return copy.deepcopy(control.controller)

    backend.on_prefill = record
    trace: Trace = []
    controller = gw.call(snapshot())
    start_s = time.monotonic()
    traffic = Traffic(gw.url)
    try:
        watch(gw, steady_s, trace)
        dip_at = time.monotonic()
        set_rate(gw, DIPPED_GBPS)
        watch(gw, dip_s, trace)
        restore_at = time.monotonic()
        set_rate(gw, 1.0)
        watch(gw, after_s, trace)
    finally:
        traffic.close()
        backend.on_prefill = on_prefill
    return DipRun(start_s, dip_at, restore_at, trace, traffic.done, errors, controller)


def live_scenario(gw: Gateway, run: DipRun) -> LiveScenario:
    """The run as the simulator replays it: the measured deployment, the controller as
    traffic began, the requests as sent, the emulator's rate steps (times from the start)."""
    control = gw.deployment.control
    assert control.inputs is not None
    cfg = gw.deployment.config
    requests = tuple(
        RecordedRequest(r.sent_s - run.start_s, r.prompt_tokens, r.output_tokens)
        for r in run.requests
        if r.status == 200
    )
    schedule = ((run.dip_s - run.start_s, DIPPED_GBPS), (run.restore_s - run.start_s, 1.0))
    return LiveScenario(
        deployment=control.inputs.deployment,
        n_p=control.inputs.n_p,
        controller=run.controller,
        requests=requests,
        link_schedule=schedule,
        block_tokens=BLOCK,
        max_batch_tokens=EngineConfig.max_num_batched_tokens,
        pipeline_layers=NUM_LAYERS,
        balance_factor=cfg.policy.balance_factor,
        instance_choice=copy.deepcopy(control.router.instance_choice),
    )


def live_samples(run: DipRun) -> list[ControlSample]:
    return [ControlSample(s - run.start_s, g, t) for s, g, t, _ in run.trace]


@pytest.mark.slow
def test_a_dip_is_measured_raises_t_and_t_returns(gateway: Gateway) -> None:
    control = gateway.deployment.control
    bounds = control.inputs.bounds if control.inputs else (0.0, 0.0)
    run = run_dip(gateway)
    trace, dip_s, restore_s, errors = run.trace, run.dip_s, run.restore_s, run.errors
    shown = [(round(s - dip_s, 1), round(g, 3), round(t), f) for s, g, t, f in trace]
    shown_all = f"{control.choice}\nbounds {bounds}\n{shown}"
    logging.getLogger(__name__).warning("dip trace (s, Gbit/s, t, fallbacks): %s", shown)
    before = [(g, t) for s, g, t, _ in trace if s < dip_s]
    during = [(g, t) for s, g, t, _ in trace if dip_s + 5 <= s < restore_s]
    after = [(g, t) for s, g, t, _ in trace if s >= restore_s + 8]
    assert min(g for g, _ in before[-6:]) > 2 * DIPPED_GBPS, shown_all
    assert first_after(trace, dip_s, lambda g: g < 2 * DIPPED_GBPS) <= 5.0, shown_all
    t_before, t_during = before[-1][1], max(t for _, t in during)
    assert room_to_rise(gateway), shown_all  # the start-up left t room to rise
    assert t_during > t_before, shown_all  # t rose
    shares = remote_share(run, run.start_s, dip_s), remote_share(run, dip_s + 5, restore_s)
    if t_before < 0.9 * bounds[1]:  # the profile may start t near its bound: no room to rise
        assert shares[1] < shares[0], (shares, shown_all)
    assert first_after(trace, restore_s, lambda g: g > 2 * DIPPED_GBPS) <= 8.0, shown_all
    assert after[-1][1] < t_during, shown_all  # t came back down
    codes = Counter(r.status for r in run.requests)
    assert set(codes) == {200}, (codes, errors[:3])
    # Transfers the decode side gave up on for their deadline (the receiver refusing one
    # when its memory budget is full is counted apart: it happens at 1 Gbit/s too).
    missed = [
        (round(at - dip_s, 1), e)
        for at, e in errors
        if "deadline" in e or "timed out" in e or "Timeout" in e
    ]
    assert not missed, (missed[:3], len(errors), shown_all)
    # The same scenario in the simulator, on the same Controller: t agrees (where t had
    # room to move; at its bound both trajectories are the bound).
    live = live_samples(run)
    simulated = replay(live_scenario(gateway, run), live[-1].time_s + 1)
    agreement = compare(live, simulated)
    logging.getLogger(__name__).warning("live vs simulated t: %s", agreement)
    if run.controller.state.threshold_tokens < 0.9 * bounds[1]:
        assert agreement.mean_relative <= 0.2, (agreement, shown_all)
