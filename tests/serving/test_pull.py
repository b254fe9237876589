"""Abundant mode live: the longer cached prefix sits in the other cluster, so the gateway
pulls it across before the prefill (paper section 3.4.3), and the output is unchanged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from tests.serving.conftest import Deployed, deploy_yaml, serving

from prfaas import LLM, SamplingParams
from prfaas.deploy.launcher import free_port

PREFIX = " ".join(f"w{(13 * i) % 200 + 3}" for i in range(80))  # 80 tokens: above t, remote
PROMPT = PREFIX + " " + " ".join(f"w{i}" for i in range(40, 50))  # 10 more: below t


@pytest.fixture(scope="module")
def abundant(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    config = deploy_yaml(tiny_llama, free_port())
    config["policy"] = {"name": "prfaas", "threshold_tokens": 32, "mode": "abundant"}
    # Abundant mode may pull the PD cluster's prefixes to the PrfaaS cluster: that path
    # needs its own TLS link (no rate: pulls go unpaced; KV inside a cluster takes no link).
    config["links"].append({"src": "local", "dst": "remote", "tls": True, "emulate": False})
    with serving(config, tmp_path_factory.mktemp("abundant"), tiny_llama) as d:
        yield d


def _metric(base_url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(base_url + "/metrics").text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_prefix_cached_remotely_is_pulled_for_a_local_prefill(
    abundant: Deployed, tiny_llama: Path
) -> None:
    client = openai.OpenAI(base_url=abundant.base_url + "/v1", api_key="key-alice", max_retries=0)
    first = client.completions.with_raw_response.create(
        model="tiny", prompt=PREFIX, max_tokens=2, temperature=0
    )
    assert first.headers["x-prfaas-route"].split()[0] == "prfaas"
    # The remote instance's cache events reach the kv index with its next heartbeat.
    route = ""
    deadline = time.monotonic() + 10
    while "pull=" not in route and time.monotonic() < deadline:
        time.sleep(0.6)
        raw = client.completions.with_raw_response.create(
            model="tiny", prompt=PROMPT, max_tokens=12, temperature=0
        )
        route = raw.headers["x-prfaas-route"]
    # Only 10 tokens are new once the 80-token prefix counts wherever it is cached: local
    # prefill, with the prefix pulled from the remote instance first.
    assert route.split()[0] == "pd-p" and "pull=prfaas-0" in route, route
    completion = raw.parse()
    reference = LLM(str(tiny_llama), num_kv_blocks=64)
    out = reference.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0))
    assert completion.choices[0].text == out[0].outputs[0].text
    assert completion.usage is not None
    details = completion.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == 80
    assert _metric(abundant.base_url, 'prfaas_cache_pulls_total{outcome="ok"') == 1
    assert _metric(abundant.base_url, "prfaas_cache_pulled_tokens_total") == 80
    # Now the local prefill instance holds the prefix itself: no second pull.
    time.sleep(0.6)
    again = client.completions.with_raw_response.create(
        model="tiny", prompt=PROMPT, max_tokens=12, temperature=0
    )
    assert "pull=" not in again.headers["x-prfaas-route"]
    assert again.parse().choices[0].text == out[0].outputs[0].text
