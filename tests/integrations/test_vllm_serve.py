"""`prfaas serve --engine vllm` with the official openai client: the embedded default topology
(PD cluster: pd-p-0, pd-d-0; PrfaaS cluster: prfaas-0; an emulated WAN link with mutual TLS),
every instance a vLLM engine behind the worker protocol, the KV moving through prfaas's
connector. One deployment serves every test of this module (engine starts dominate).

The answers must equal one vLLM engine generating alone (vllm_instance.py, started beside
the deployment), on both paths; the last test kills the PrfaaS prefill instance (its whole
process group: worker and vLLM engine core) while its KV crawls over a throttled link, and
the request must still complete by local prefill, leaving every worker clean.
Runs in the vLLM venv (`make test-vllm`); skipped where vLLM is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vLLM is not installed in this environment: `make test-vllm` runs these tests in "
        "the .venv-vllm environment that `make setup-vllm` creates",
        allow_module_level=True,
    )

import httpx
import openai

from prfaas.deploy.launcher import free_port
from prfaas.messages import (
    TOKEN_HEADER,
    DecodeCommand,
    LinkControl,
    SamplingSpec,
    TokenEvent,
    WorkerCheck,
)
from tests.deploy_helper import Running, gateway_tls, start, topology

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("vllm_instance.py")
CLUSTER_TOKEN = "vllm-serve-cluster-token"
KEYS = {"alice": "key-alice", "carol": "key-carol"}
MODEL = "smollm2"
THRESHOLD_TOKENS = 32
MAX_TOKENS = 16
REFERENCE_START_S = 600.0
SETTLE_S = 30.0
SLOW_GBPS = 0.002  # 250 KB/s: the long prompt's ~12 MB of KV takes about a minute
# Token-id prompts (the completions API takes them): no tokenizer question between the
# deployment and the reference engine.
SHORT = [(17 * i + 5) % 4000 + 100 for i in range(20)]  # below t: the PD cluster prefills
LONG = [(31 * i + 7) % 9000 + 200 for i in range(300)]  # above t: the PrfaaS cluster
FAULT = [(13 * i + 3) % 9000 + 300 for i in range(260)]  # above t, no block shared
PROMPTS = {"short": SHORT, "long": LONG, "fault": FAULT}


@dataclass
class Deployment:
    running: Running
    reference: dict[str, Any]  # name -> vLLM alone: {"token_ids", "text"}

    @property
    def base_url(self) -> str:
        return self.running.base_url

    def client(self, tenant: str = "alice", timeout_s: float = 300.0) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.base_url + "/v1", api_key=KEYS[tenant], max_retries=0, timeout=timeout_s
        )

    def headers(self) -> dict[str, str]:
        return {TOKEN_HEADER: CLUSTER_TOKEN}

    def workers(self) -> dict[str, dict[str, Any]]:
        r = httpx.get(self.base_url + "/status", headers=self.headers(), timeout=10)
        r.raise_for_status()
        return {i["name"]: i for i in r.json()["instances"]}

    def fallbacks(self, instance: str = "pd-d-0") -> float:
        text = httpx.get(self.base_url + "/metrics", timeout=10).text
        m = re.search(rf'^prfaas_instance_kv_fallbacks{{instance="{instance}"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0


def check(url: str) -> WorkerCheck:
    # A worker's control port: HTTPS, a gateway's certificate.
    headers = {TOKEN_HEADER: CLUSTER_TOKEN}
    r = httpx.get(url + "/internal/check", headers=headers, timeout=10, verify=gateway_tls())
    r.raise_for_status()
    return WorkerCheck.decode(r.content)


def decode_at(d: Deployment, instance: str, cmd: DecodeCommand) -> list[TokenEvent]:
    """``cmd``'s whole token stream at a decode worker, as the gateway opens it."""
    url = d.workers()[instance]["http_url"]
    r = httpx.post(
        url + "/decode",
        content=cmd.encode(),
        headers=d.headers(),
        timeout=120,
        verify=gateway_tls(),
    )
    r.raise_for_status()
    return [TokenEvent.decode(line) for line in r.text.splitlines()]


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    end_s = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end_s:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def assert_clean(d: Deployment, names: list[str]) -> None:
    """Each named worker holds nothing: no leased block, request, stream, KV buffer or send
    (waits up to ``SETTLE_S`` for vLLM's next pool report)."""
    urls = {n: w["http_url"] for n, w in d.workers().items() if n in names}
    assert sorted(urls) == sorted(names), urls
    end_s = time.monotonic() + SETTLE_S
    while True:
        checks = {n: check(u) for n, u in urls.items()}
        leaks = {n: c for n, c in checks.items() if not c.idle_clean}
        if not leaks:
            return
        if time.monotonic() > end_s:
            raise AssertionError(f"not clean after {SETTLE_S}s: {leaks}")
        time.sleep(0.25)


def start_reference(folder: Path, tmp: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """vLLM alone (no connector) on every prompt, in its own process."""
    jobs = [
        {"name": name, "prompt_token_ids": p, "max_tokens": MAX_TOKENS}
        for name, p in PROMPTS.items()
    ]
    spec = {
        "model": str(folder),
        "kv_transfer_config": None,
        "ready": str(tmp / "ref.ready"),
        "go": str(tmp / "ref.ready"),  # no need to wait for anyone
        "out": str(tmp / "ref.out.json"),
        "jobs": jobs,
    }
    (tmp / "ref.json").write_text(json.dumps(spec))
    with (tmp / "ref.log").open("wb") as log:
        proc = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, str(SCRIPT), str(tmp / "ref.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"},
        )
    return proc, tmp / "ref.out.json"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    from prfaas.config import default_cache_dir
    from prfaas.model.loader import resolve_model_folder

    tmp = tmp_path_factory.mktemp("vllm-serve")
    folder = resolve_model_folder(None, default_cache_dir())
    ref_proc, ref_out = start_reference(folder, tmp)
    config = topology(
        folder,
        free_port(),
        served_model_name=MODEL,
        threshold_tokens=THRESHOLD_TOKENS,
        link={"rtt_ms": 2.0},
        max_model_len=1024,
        tenants=[{"name": t, "api_keys": [k]} for t, k in KEYS.items()],
        kv_deadline_s=60.0,
        engine="vllm",
    )
    # One unbound thread each (see launch.thread_env) and a small KV pool: three engines
    # and the reference share 2 cores and a memory other test runs use too (an engine's
    # worker holds about 1.3 GB besides its pool; 1 GiB pools got one OOM-killed).
    for cluster in config["clusters"]:
        for inst in cluster["instances"]:
            inst |= {"num_threads": 1, "kv_cache_gb": 0.25}
    running = start(config, tmp, CLUSTER_TOKEN)
    try:
        ref_proc.wait(REFERENCE_START_S)
        assert ref_proc.returncode == 0, (tmp / "ref.log").read_text()[-3000:]
        yield Deployment(running, json.loads(ref_out.read_text()))
    finally:
        running.stop()
        if ref_proc.poll() is None:
            ref_proc.kill()


def complete(d: Deployment, prompt: list[int], tenant: str = "alice") -> tuple[str, str, int]:
    """(route, text, cached_tokens) of one greedy completion."""
    raw = d.client(tenant).completions.with_raw_response.create(
        model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0
    )
    completion = raw.parse()
    usage = completion.usage
    assert usage is not None
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details and details.cached_tokens else 0
    return raw.headers["x-prfaas-route"], completion.choices[0].text, cached


@pytest.mark.parametrize(("name", "route"), [("short", "pd-p"), ("long", "prfaas")])
def test_both_paths_equal_vllm_alone(deployment: Deployment, name: str, route: str) -> None:
    before = deployment.fallbacks()
    got_route, text, _ = complete(deployment, PROMPTS[name])
    assert got_route.split()[0] == route, got_route
    assert text == deployment.reference[name]["text"]
    time.sleep(1.5)  # three heartbeats: the decode instance's fallback count is current
    assert deployment.fallbacks() == before  # the KV landed; nothing was recomputed
    assert_clean(deployment, ["pd-p-0", "pd-d-0", "prfaas-0"])


def test_repeat_reports_cached_tokens_never_across_tenants(deployment: Deployment) -> None:
    prompt = [*LONG, 11, 12, 13]
    complete(deployment, prompt)
    cached = 0
    for _ in range(20):  # cache events reach the gateway with the next heartbeat
        _, text, cached = complete(deployment, prompt)
        if cached:
            break
        time.sleep(0.25)
    assert cached >= 9 * 32  # whole blocks of the 303-token prompt
    _, other_text, other_cached = complete(deployment, prompt, tenant="carol")
    assert other_cached == 0  # same prompt, another tenant: computed afresh
    assert other_text == text

    # vLLM's own KV events reached the kv index under each tenant's salted hashes: the
    # PrfaaS instance that computed the prompt twice holds both tenants' full blocks there.
    def indexed() -> int:
        return int(deployment.workers()["prfaas-0"]["kv_index_blocks"])

    wait_for(lambda: indexed() >= 2 * (len(prompt) // 32), 10, "the kv index to hold the blocks")


def test_prefill_instance_killed_mid_transfer_falls_back(deployment: Deployment) -> None:
    d = deployment
    prefill_url = d.workers()["prfaas-0"]["http_url"]
    victim = check(prefill_url)
    before = d.fallbacks()
    link = LinkControl(rate_gbps=SLOW_GBPS).encode()
    r = httpx.post(
        f"{d.base_url}/internal/link/remote->local", content=link, headers=d.headers(), timeout=10
    )
    r.raise_for_status()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(complete, d, FAULT)
        wait_for(lambda: check(prefill_url).kv_sending == 1, 120, "the KV send to start")
        os.killpg(victim.pid, signal.SIGKILL)  # the worker and its vLLM engine core
        route, text, _ = answer.result()
    assert route.startswith("prfaas prefill=prfaas-0"), route
    assert text == d.reference["fault"]["text"]
    wait_for(lambda: d.fallbacks() >= before + 1, 10, "the fallback to be counted")
    assert_clean(d, ["pd-p-0", "pd-d-0"])


def test_a_resumed_stream_goes_on_from_the_streamed_tokens(deployment: Deployment) -> None:
    """Decode failover lands on a vLLM instance: it prefills the prompt and the tokens
    another instance streamed, and streams the rest of vLLM alone's greedy answer. What vLLM
    cannot carry across the resume (output-only penalties, a grammar) is refused."""
    want = deployment.reference["short"]["token_ids"]
    assert len(want) == MAX_TOKENS  # no early stop: a resume point mid-answer exists
    cmd = DecodeCommand(
        request_id="resume-0",
        prompt_token_ids=SHORT,
        params=SamplingSpec(max_tokens=MAX_TOKENS, temperature=0.0),
        tenant_salt_hex="",
        expect_kv=False,
        deadline_s=120.0,
        resume_token_ids=want[:5],
    )
    events = decode_at(deployment, "pd-d-0", cmd)
    assert [t for e in events for t in e.token_ids] == want[5:]
    assert events[-1].finished and events[-1].finish_reason == "length"
    penalized = SamplingSpec(max_tokens=MAX_TOKENS, temperature=0.0, presence_penalty=0.5)
    refused = cmd.model_copy(update={"request_id": "resume-1", "params": penalized})
    (event,) = decode_at(deployment, "pd-d-0", refused)
    assert event.finish_reason == "error" and "presence_penalty" in (event.error or "")
    assert_clean(deployment, ["pd-d-0"])
