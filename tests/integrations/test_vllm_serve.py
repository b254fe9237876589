"""`prfaas serve --engine vllm` with the official openai client: the session's vLLM deployment
(tests/vllm_deployment.py: the standard topology, PD cluster pd-p-0, pd-d-0, PrfaaS cluster
prfaas-0, an emulated WAN link with mutual TLS; every instance a vLLM engine behind the
worker protocol, the KV moving through prfaas's connector; the byte-level tiny Llama). The
API tests' vLLM cases use the same deployment, so its engines start once per session.

The answers must equal vLLM alone: the decode instance's engine computing the whole prompt
itself (a decode command that expects no KV, under a tenant salt no request shares, so
neither a transfer nor a prefix hit is involved), on both paths. A seed gives the same
sample twice on either path (vLLM's own sampler: it draws other tokens for a seed than the
reference engine's). The last test kills the PrfaaS prefill instance (its whole process
group: worker and vLLM engine core) while its KV crawls over a throttled link, and the
request must still complete by local prefill, leaving every worker clean; it must stay the
last test of the session to use the deployment (it is: tests/api is collected first).
Runs in the vLLM venv; skipped where vLLM is not installed.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from prfaas.messages import (
    TOKEN_HEADER,
    DecodeCommand,
    LinkControl,
    SamplingSpec,
    TokenEvent,
    WorkerCheck,
)
from tests.deploy_helper import gateway_tls
from tests.integrations.vllm_procs import require_vllm
from tests.vllm_deployment import KEYS, MODEL, VLLM_TOKEN, Deployed

require_vllm()

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # the deployment's start bound

MAX_TOKENS = 16
SETTLE_S = 30.0
# The tiny model's KV is 1 KiB a token (2 layers, K and V, 2 heads of 32 fp32 dims): the
# link emulator passes its first 256 KiB at once (its pacer's burst), the fault prompt's
# other 224 KiB take about 35 s at 50 kbit/s, time to kill the sender mid-way.
SLOW_GBPS = 0.00005
# Token-id prompts (the completions API takes them) over the byte-level vocabulary's 256
# byte tokens (ids 3..258): no tokenizer question between the deployment and vLLM alone.
SHORT = [(17 * i + 5) % 250 + 5 for i in range(20)]  # below t: the PD cluster prefills
LONG = [(31 * i + 7) % 250 + 5 for i in range(300)]  # above t: the PrfaaS cluster
BOUNDARY = [(23 * i + 4) % 250 + 5 for i in range(9 * 32)]  # the same, on a block boundary
FAULT = [(13 * i + 3) % 250 + 5 for i in range(480)]  # above t, no block shared
REPEAT = [(11 * i + 9) % 250 + 5 for i in range(303)]  # above t, no block shared
# route -> a prompt taking it, sampled with seeds
SEEDED = {"pd-p": [(7 * i + 1) % 250 + 5 for i in range(24)]}
SEEDED["prfaas"] = [(19 * i + 2) % 250 + 5 for i in range(200)]


@dataclass
class Deployment:
    base_url: str

    def client(self, tenant: str = "alice", timeout_s: float = 300.0) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.base_url + "/v1", api_key=KEYS[tenant], max_retries=0, timeout=timeout_s
        )

    def headers(self) -> dict[str, str]:
        return {TOKEN_HEADER: VLLM_TOKEN}

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
    headers = {TOKEN_HEADER: VLLM_TOKEN}
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


def alone(d: Deployment, name: str, prompt: list[int], **params: Any) -> list[TokenEvent]:
    """vLLM alone on ``prompt`` (greedy, ``MAX_TOKENS``): pd-d-0's engine computes it all
    itself, under a tenant salt of its own (no prefix hit on anything a test cached)."""
    cmd = DecodeCommand(
        request_id=f"alone-{name}",
        prompt_token_ids=prompt,
        params=SamplingSpec(max_tokens=MAX_TOKENS, temperature=0.0, **params),
        tenant_salt_hex=f"a1{len(name):02x}{name.encode().hex()}",
        expect_kv=False,
        deadline_s=120.0,
    )
    events = decode_at(d, "pd-d-0", cmd)
    assert events and events[0].cached_tokens == 0, events[:1]
    assert all(e.error is None for e in events), events[-1]
    return events


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


@pytest.fixture(scope="module")
def deployment(vllm_bytes: Deployed) -> Deployment:
    return Deployment(vllm_bytes.base_url)


def complete(
    d: Deployment, prompt: list[int], tenant: str = "alice", **sampling: Any
) -> tuple[str, str, int]:
    """(route, text, cached_tokens) of one completion (greedy unless ``sampling`` says)."""
    raw = d.client(tenant).completions.with_raw_response.create(
        model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, **{"temperature": 0.0, **sampling}
    )
    completion = raw.parse()
    usage = completion.usage
    assert usage is not None
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details and details.cached_tokens else 0
    return raw.headers["x-prfaas-route"], completion.choices[0].text, cached


@pytest.mark.parametrize(
    ("name", "prompt", "route"),
    [("short", SHORT, "pd-p"), ("long", LONG, "prfaas"), ("boundary", BOUNDARY, "prfaas")],
)
def test_both_paths_equal_vllm_alone(
    deployment: Deployment, name: str, prompt: list[int], route: str
) -> None:
    want = "".join(e.text for e in alone(deployment, name, prompt))
    before = deployment.fallbacks()
    got_route, text, _ = complete(deployment, prompt)
    assert got_route.split()[0] == route, got_route
    assert text == want
    time.sleep(1.5)  # three heartbeats: the decode instance's fallback count is current
    assert deployment.fallbacks() == before  # the KV landed; nothing was recomputed
    assert_clean(deployment, ["pd-p-0", "pd-d-0", "prfaas-0"])


def test_repeat_reports_cached_tokens_never_across_tenants(deployment: Deployment) -> None:
    def indexed() -> int:
        return int(deployment.workers()["prfaas-0"]["kv_index_blocks"])

    prompt = REPEAT
    before = indexed()  # the blocks other tests (the API tests too) left there
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
    wanted = before + 2 * (len(prompt) // 32)
    wait_for(lambda: indexed() >= wanted, 10, "the kv index to hold both tenants' blocks")


def test_a_resumed_stream_goes_on_from_the_streamed_tokens(deployment: Deployment) -> None:
    """Decode failover lands on a vLLM instance: it prefills the prompt and the tokens
    another instance streamed, and streams the rest of vLLM alone's greedy answer. What vLLM
    cannot carry across the resume (output-only penalties, a grammar) is refused."""
    events = alone(deployment, "resume", SHORT, ignore_eos=True)
    want = [t for e in events for t in e.token_ids]
    assert len(want) == MAX_TOKENS  # a resume point mid-answer exists
    cmd = DecodeCommand(
        request_id="resume-0",
        prompt_token_ids=SHORT,
        params=SamplingSpec(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True),
        tenant_salt_hex="",
        expect_kv=False,
        deadline_s=120.0,
        resume_token_ids=want[:5],
    )
    events = decode_at(deployment, "pd-d-0", cmd)
    assert [t for e in events for t in e.token_ids] == want[5:]
    assert events[-1].finished and events[-1].finish_reason == "length"
    penalized = cmd.params.model_copy(update={"presence_penalty": 0.5})
    refused = cmd.model_copy(update={"request_id": "resume-1", "params": penalized})
    (event,) = decode_at(deployment, "pd-d-0", refused)
    assert event.finish_reason == "error" and "presence_penalty" in (event.error or "")
    assert_clean(deployment, ["pd-d-0"])


@pytest.mark.parametrize("route", ["pd-p", "prfaas"])
def test_a_seed_draws_the_same_sample_on_either_path(deployment: Deployment, route: str) -> None:
    """A seeded sample through prfaas on vLLM instances: the same seed twice gives the same
    text, another seed another (vLLM's sampler on both, so the check is vLLM's own
    determinism; on the remote path the decode instance draws every output token). The two
    tenants keep the repeat off the first one's cached blocks: both take ``route``."""
    prompt = SEEDED[route]
    sampled = {"temperature": 1.0, "seed": 7}
    first_route, first, _ = complete(deployment, prompt, "alice", **sampled)
    again_route, again, _ = complete(deployment, prompt, "carol", **sampled)
    _, other, _ = complete(deployment, prompt, "alice", **{**sampled, "seed": 8})
    assert [first_route.split()[0], again_route.split()[0]] == [route, route]
    assert again == first
    assert other != first  # 16 draws from a near-uniform 260-token distribution


def set_link(d: Deployment, control: LinkControl) -> None:
    url = f"{d.base_url}/internal/link/remote->local"
    httpx.post(url, content=control.encode(), headers=d.headers(), timeout=10).raise_for_status()


def test_prefill_instance_killed_mid_transfer_falls_back(deployment: Deployment) -> None:
    """The last test of the session on the deployment: it has no PrfaaS prefill instance
    afterwards."""
    d = deployment
    want = "".join(e.text for e in alone(d, "fault", FAULT))
    prefill_url = d.workers()["prfaas-0"]["http_url"]
    victim = check(prefill_url)
    before = d.fallbacks()
    set_link(d, LinkControl(rate_gbps=SLOW_GBPS))
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(complete, d, FAULT)
            wait_for(lambda: check(prefill_url).kv_sending == 1, 120, "the KV send to start")
            os.killpg(victim.pid, signal.SIGKILL)  # the worker and its vLLM engine core
            route, text, _ = answer.result()
    finally:
        set_link(d, LinkControl(rate_gbps=1.0))  # the topology's rate
    assert route.startswith("prfaas prefill=prfaas-0"), route
    assert text == want
    wait_for(lambda: d.fallbacks() >= before + 1, 10, "the fallback to be counted")
    assert_clean(d, ["pd-p-0", "pd-d-0"])
