"""Fault drills against real processes: `prfaas serve` (gateway, workers, an emulated WAN
link with mutual TLS) or hand-started `prfaas worker`s, on a tiny checkpoint, with a short
KV deadline so deadlines fire quickly. Helpers read every worker's GET /internal/check and
drive the link emulator and worker restarts through the gateway's admin routes."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from prfaas import LLM, SamplingParams
from prfaas.deploy.launcher import free_port
from prfaas.messages import TOKEN_HEADER, LinkControl, WorkerCheck
from tests.conftest import make_tiny_checkpoint
from tests.deploy_helper import gateway_tls, shared_cache, start, stop_process, topology

CLUSTER_TOKEN = "reliability-cluster-token"
API_KEY = "key-drill"
MODEL = "tiny"
KV_DEADLINE_S = 4.0
BODY_TIMEOUT_S = 3.0  # the gateway's slow-body bound in the drills (default 30 s)
# Loaded 2-core machine: an answer may take a few seconds beyond the deadline.
MARGIN_S = 20.0
SETTLE_S = 20.0  # how long leak checks wait for the processes to go idle
THRESHOLD_TOKENS = 32
LINK = "remote->local"
SHORT = " ".join(f"w{i}" for i in range(10, 20))  # below t: prefilled in the local cluster


def long_prompt(tag: int) -> str:
    """A prompt above t (prefilled remotely) sharing no block with another tag's: 401 tokens,
    ~800 KB of KV on the drill model."""
    return f"t{tag} " + " ".join(f"w{(7 * i + 11 * tag) % 200 + 3}" for i in range(400))


LONG = long_prompt(0)


def env_for(tmp: Path) -> dict[str, str]:
    return dict(
        os.environ,
        PRFAAS_CACHE_DIR=shared_cache(tmp),
        PYTHONUNBUFFERED="1",
        PRFAAS_CLUSTER_TOKEN=CLUSTER_TOKEN,
    )


def serve_config(model: Path, port: int, **overrides: Any) -> dict[str, Any]:
    cfg = topology(
        model,
        port,
        served_model_name=MODEL,
        threshold_tokens=THRESHOLD_TOKENS,
        link={"rtt_ms": 2.0},
        max_model_len=512,
        tenants=[{"name": "drill", "api_keys": [API_KEY]}],
        kv_deadline_s=KV_DEADLINE_S,
        overload={"body_timeout_s": BODY_TIMEOUT_S},
    )
    cfg.update(overrides)
    return cfg


@dataclass
class Serve:
    """A running gateway (`prfaas serve`) and the helpers the drills need."""

    base_url: str
    proc: subprocess.Popen[bytes]
    tmp: Path

    def headers(self) -> dict[str, str]:
        return {TOKEN_HEADER: CLUSTER_TOKEN}

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = httpx.get(self.base_url + "/status", timeout=10).json()
        return status

    def instance(self, name: str) -> dict[str, Any]:
        return next(i for i in self.status()["instances"] if i["name"] == name)

    def link(self, **control: Any) -> None:
        r = httpx.post(
            f"{self.base_url}/internal/link/{LINK}",
            content=LinkControl(**control).encode(),
            headers=self.headers(),
            timeout=10,
        )
        r.raise_for_status()

    def restart(self, name: str) -> None:
        r = httpx.post(
            f"{self.base_url}/internal/workers/{name}/restart", headers=self.headers(), timeout=30
        )
        r.raise_for_status()

    def fallbacks(self, instance: str = "pd-d-0") -> float:
        text = httpx.get(self.base_url + "/metrics", timeout=10).text
        m = re.search(rf'^prfaas_instance_kv_fallbacks{{instance="{instance}"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    def client(self, timeout_s: float = KV_DEADLINE_S + MARGIN_S) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=timeout_s
        )

    def long_stream(self, max_tokens: int) -> openai.Stream[openai.types.Completion]:
        """A greedy streamed completion of ``SHORT`` (local prefill) that runs ``max_tokens``
        tokens whatever it says: long enough to stop a worker in the middle of it."""
        return self.client().completions.create(
            model=MODEL,
            prompt=SHORT,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )

    def wait_healthy(self, names: list[str], epochs: dict[str, int] | None = None) -> None:
        """Until every named worker is registered and healthy (with an epoch other than the
        one in ``epochs``, for a restarted worker)."""
        end = time.monotonic() + 120
        while time.monotonic() < end:
            with_status = {i["name"]: i for i in self.status()["instances"]}
            if all(
                n in with_status
                and with_status[n]["healthy"]
                and with_status[n]["epoch"] != (epochs or {}).get(n)
                for n in names
            ):
                return
            time.sleep(0.2)
        raise AssertionError(f"workers {names} not healthy: {self.status()}")

    def assert_idle(self, settle_s: float = SETTLE_S) -> None:
        """The gateway holds nothing: no request in flight, none counted at any worker."""
        end = time.monotonic() + settle_s
        while True:
            text = httpx.get(self.base_url + "/metrics", timeout=10).text
            in_flight = re.search(r"^prfaas_requests_in_flight (\S+)$", text, re.M)
            counted = {i["name"]: i["inflight"] for i in self.status()["instances"]}
            if in_flight and float(in_flight.group(1)) == 0 and not any(counted.values()):
                return
            if time.monotonic() > end:
                raise AssertionError(f"gateway not idle: {in_flight}, {counted}")
            time.sleep(0.25)

    def stop(self) -> None:
        stop_process(self.proc)


def start_serve(tmp: Path, config: dict[str, Any]) -> Serve:
    running = start(config, tmp, CLUSTER_TOKEN)
    return Serve(running.base_url, running.proc, tmp)


def worker_check(url: str) -> WorkerCheck:
    r = httpx.get(
        url + "/internal/check",
        headers={TOKEN_HEADER: CLUSTER_TOKEN},
        timeout=10,
        verify=gateway_tls(),  # a worker's control port: HTTPS, a gateway's certificate
    )
    r.raise_for_status()
    return WorkerCheck.decode(r.content)


def assert_clean(
    urls: dict[str, str], baseline_tasks: dict[str, int] | None = None, settle_s: float = SETTLE_S
) -> dict[str, WorkerCheck]:
    """Every worker's pool passes its integrity check and holds nothing: no leased block,
    request, KV connection, landing, reservation or send; asyncio tasks back to baseline
    (a few keep-alive HTTP connections of slack). Waits up to ``settle_s`` for that."""
    end = time.monotonic() + settle_s
    while True:
        checks = {name: worker_check(url) for name, url in urls.items()}
        leaks = {
            name: c
            for name, c in checks.items()
            if not c.idle_clean
            or (baseline_tasks and c.asyncio_tasks > baseline_tasks.get(name, 0) + TASK_SLACK)
        }
        if not leaks:
            return checks
        if time.monotonic() > end:
            raise AssertionError(f"not clean after {settle_s}s: {leaks}")
        time.sleep(0.25)


TASK_SLACK = 6  # uvicorn keeps a task per open keep-alive connection


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="package")
def drill_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with 4 layers of 4 KV heads: 2 KB of KV per token, so a long prompt's
    transfer outlasts the link emulator's 256 KB burst and can be struck mid-way."""
    folder = tmp_path_factory.mktemp("drill-model")
    return make_tiny_checkpoint(folder, "llama", num_hidden_layers=4, num_key_value_heads=4)


@pytest.fixture(scope="package")
def reference(drill_model: Path) -> Callable[[str, int], str]:
    """Greedy output of the offline engine on the same checkpoint, memoized."""
    llm = LLM(str(drill_model), num_kv_blocks=128)
    memo: dict[tuple[str, int], str] = {}

    def expected(prompt: str, max_tokens: int) -> str:
        if (prompt, max_tokens) not in memo:
            out = llm.generate([prompt], SamplingParams(max_tokens=max_tokens, temperature=0))
            memo[prompt, max_tokens] = out[0].outputs[0].text
        return memo[prompt, max_tokens]

    return expected


@pytest.fixture(scope="module")
def serve(drill_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    tmp = tmp_path_factory.mktemp("drill")
    s = start_serve(tmp, serve_config(drill_model, free_port()))
    try:
        yield s
    finally:
        s.stop()
