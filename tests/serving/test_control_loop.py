"""The live control loop on a real deployment: a gateway in this process (so the test can
drive the loop's ticks itself), four spawned workers on a tiny checkpoint (PD cluster of one
prefill and two decode instances, one PrfaaS prefill instance), an emulated WAN link.

Start-up profiling measures the workers and the planner solves t; a prefill backlog moves t
(the backlog arrives as the heartbeat a busy worker would send); the long tick, on observed
prompt lengths, converts a decode instance to prefill through the real drain-and-switch path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from tests.deploy_helper import pd_cluster, prfaas_cluster, shared_cache, sized_for_tests
from tests.serving.conftest import CLUSTER_TOKEN

from prfaas.deploy.config import DeployConfig
from prfaas.deploy.launcher import free_port, listen_socket
from prfaas.deploy.run import model_facts
from prfaas.deploy.serve import (
    Deployment,
    build_deployment,
    control_server,
    start_control,
    wait_ready,
)
from prfaas.messages import TOKEN_HEADER, Heartbeat, ProfileRequest, ProfileResult

T = TypeVar("T")
MAX_MODEL_LEN = 512
BLOCK = 16


class Gateway:
    """A deployment whose gateway runs on an event loop in a thread of this process."""

    def __init__(self, cfg: DeployConfig, log_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{cfg.port}"
        self.deployment: Deployment = self.call(self._start(cfg, log_dir), 300)

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _start(self, cfg: DeployConfig, log_dir: Path) -> Deployment:
        folder, tokenizer, max_model_len = await asyncio.to_thread(model_facts, cfg)
        # The control listener, bound before the workers start: they register there (mTLS).
        control_socket = listen_socket("127.0.0.1", 0)
        control_port = control_socket.getsockname()[1]
        deployment = build_deployment(
            cfg,
            tokenizer,
            folder,
            max_model_len,
            BLOCK,
            gateway_url=f"https://127.0.0.1:{control_port}",
            api_keys={"key": "alice"},
            log_dir=log_dir,
        )
        self.server = uvicorn.Server(
            uvicorn.Config(deployment.app, host="127.0.0.1", port=cfg.port, log_level="warning")
        )
        control = control_server(deployment, "127.0.0.1", control_port)
        assert control is not None
        self.servers = [self.server, control]
        self.serving = asyncio.gather(self.server.serve(), control.serve(sockets=[control_socket]))
        try:
            await wait_ready(deployment, 240)
            await start_control(deployment)
        except BaseException:
            await self._stop(deployment)
            raise
        return deployment

    async def _stop(self, deployment: Deployment) -> None:
        for server in self.servers:
            server.should_exit = True
        await asyncio.wait_for(self.serving, 10)
        await deployment.backend.aclose()
        deployment.close()

    def close(self) -> None:
        try:
            self.call(self._stop(self.deployment), 30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def config(model: Path) -> DeployConfig:
    return DeployConfig.model_validate(
        sized_for_tests(
            {
                "model": str(model),
                "served_model_name": "tiny",
                "port": free_port(),
                "max_model_len": MAX_MODEL_LEN,
                "clusters": [pd_cluster(1, 2), prfaas_cluster(1)],
                "links": [{"src": "remote", "dst": "local", "rate_gbps": 1.0, "rtt_ms": 2.0}],
                # No threshold_tokens: t is profiled. Long intervals: the test ticks the loop.
                # One output token: decode cannot bind (a batch-4 step per request against a
                # whole ~400-token prefill), so the planner wants more PD prefill.
                "policy": {
                    "control": {
                        "short_interval_s": 3600,
                        "long_interval_s": 3600,
                        "output_tokens": 1,
                    }
                },
            }
        )
    )


@pytest.fixture(scope="module")
def gateway(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("control")
    with pytest.MonkeyPatch.context() as env:  # the in-process gateway reads them once
        env.setenv("PRFAAS_CLUSTER_TOKEN", CLUSTER_TOKEN)
        env.setenv("PRFAAS_CACHE_DIR", shared_cache(tmp))
        gw = Gateway(config(tiny_llama), tmp / "logs")
    try:
        yield gw
    finally:
        gw.close()


def status(gw: Gateway) -> dict[str, Any]:
    return dict(httpx.get(gw.url + "/status", timeout=10).json())


def test_start_up_profiling_sets_t_inside_the_context(gateway: Gateway) -> None:
    data = status(gateway)
    threshold = data["threshold"]
    assert data["threshold_source"] == "profiled" == threshold["source"]
    assert threshold["solved_tokens"] is not None
    assert 2 * BLOCK <= data["threshold_tokens"] <= 0.75 * MAX_MODEL_LEN
    for cluster in ("local", "remote"):
        seconds = threshold["prefill_s"][cluster]["seconds"]
        assert len(seconds) >= 3 and all(s > 0 for s in seconds)
    assert threshold["decode_step_s"] > 0
    assert data["control"]["running"] and data["control"]["n_p"] == 1


async def _backlog(gw: Gateway, name: str, queued_tokens: int) -> None:
    """The heartbeat a worker with this prefill backlog would send (its next real one
    overwrites it; the test ticks in between)."""
    record = gw.deployment.fleet.workers[name]
    hb = Heartbeat(
        name=name,
        epoch=record.info.epoch,
        role=record.info.role,
        num_waiting=1,
        num_running=0,
        kv_usage=0.0,
        fallbacks=0,
        queued_tokens=queued_tokens,
    )
    assert gw.deployment.fleet.heartbeat(hb)


def test_a_prefill_backlog_moves_t(gateway: Gateway) -> None:
    control = gateway.deployment.control
    t0 = control.router.state.threshold_tokens
    assert control.inputs is not None
    lo, hi = control.inputs.bounds

    async def ticks(busy: str, idle: str, n: int) -> float:
        for _ in range(n):
            await _backlog(gateway, busy, 10**9)
            await _backlog(gateway, idle, 0)
            control.short_tick()
        return control.router.state.threshold_tokens

    # The PD-P side is backed up: fewer prompts local; then the PrfaaS side: more local.
    low = gateway.call(ticks("pd-p-0", "prfaas-0", 5))
    assert low < t0 or t0 <= lo
    high = gateway.call(ticks("prfaas-0", "pd-p-0", 10))
    assert high > low or low >= hi
    assert lo <= low <= high <= hi
    assert status(gateway)["threshold_tokens"] == high
    assert control.short_ticks >= 15


def test_long_tick_converts_a_decode_instance_on_a_real_worker(gateway: Gateway) -> None:
    control = gateway.deployment.control
    fleet = gateway.deployment.fleet
    # The lengths 300 routed long prompts would have left in the router's window.
    gateway.call(_observe(gateway, [380 + (7 * i) % 120 for i in range(300)]))
    # When to ask for a conversion (a PD-P queue past the slack) is the controller's, tested
    # in tests/router/test_control.py; here the question is whether a real worker applies
    # one, so any queue counts as asking (these idle workers report none).
    assert control.controller is not None
    config = control.controller.config
    control.controller.config = dataclasses.replace(config, queue_slack_s=-1.0)
    try:
        changes = gateway.call(control.long_tick(), 120)
    finally:
        control.controller.config = config
    # One decode instance becomes a prefill instance: the least loaded (by the latest
    # heartbeats, so either of the two idle ones).
    assert len(changes) == 1 and changes[0].to_role == "prefill"
    converted = changes[0].instance
    assert converted in ("pd-d-0", "pd-d-1")
    assert fleet.workers[converted].info.role == "prefill"
    assert control.controller is not None and control.controller.n_p == 2
    data = status(gateway)
    roles = {i["name"]: i["role"] for i in data["instances"]}
    kept = "pd-d-1" if converted == "pd-d-0" else "pd-d-0"
    assert roles == {
        "pd-p-0": "prefill",
        converted: "prefill",
        kept: "decode",
        "prfaas-0": "prefill",
    }
    assert data["control"]["role_changes"] == [f"{converted}->prefill"]
    assert 2 * BLOCK <= data["threshold_tokens"] <= 0.75 * MAX_MODEL_LEN
    # The converted worker serves: a request still completes on the new split.
    r = httpx.post(
        gateway.url + "/v1/completions",
        headers={"Authorization": "Bearer key"},
        json={"model": "tiny", "prompt": "w5 w6 w7", "max_tokens": 4, "temperature": 0},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    health = httpx.get(
        fleet.workers[converted].info.http_url + "/health",
        headers={TOKEN_HEADER: CLUSTER_TOKEN},
        timeout=10,
        verify=as_gateway(gateway),
    ).json()
    assert health["role"] == "prefill"


async def _observe(gw: Gateway, lengths: list[int]) -> None:
    gw.deployment.backend.router.observed_lengths.extend(lengths)


def as_gateway(gw: Gateway) -> ssl.SSLContext:
    """A client context with the deployment's gateway certificate: what a worker answers."""
    assert gw.deployment.control_tls is not None
    return gw.deployment.control_tls.client_context()


def test_profile_endpoint_checks_the_token_and_bounds_its_input(gateway: Gateway) -> None:
    url = gateway.deployment.fleet.workers["prfaas-0"].info.http_url + "/profile"
    ok = {TOKEN_HEADER: CLUSTER_TOKEN}
    body = ProfileRequest(num_tokens=[32]).encode()
    tls = as_gateway(gateway)
    assert httpx.post(url, content=body, timeout=30, verify=tls).status_code == 401
    too_long = ProfileRequest(num_tokens=[32, MAX_MODEL_LEN]).encode()
    r = httpx.post(url, content=too_long, headers=ok, timeout=30, verify=tls)
    assert r.status_code == 400 and "exceed" in r.text
    many = b'{"num_tokens": [' + b",".join(b"8" for _ in range(17)) + b"]}"
    assert httpx.post(url, content=many, headers=ok, timeout=30, verify=tls).status_code == 400
    r = httpx.post(url, content=body, headers=ok, timeout=60, verify=tls)
    assert r.status_code == 200 and ProfileResult.decode(r.content).num_tokens == [32]
