"""The official openai client against `prfaas serve`: both paths, routing, auth, residency."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from tests.serving.conftest import THRESHOLD_TOKENS, Deployed

from prfaas import LLM, SamplingParams

SHORT = " ".join(f"w{i}" for i in range(10, 20))  # 10 tokens: below t, prefilled locally
LONG = " ".join(f"w{(7 * i) % 200 + 3}" for i in range(80))  # 80 tokens: above t, remote


@pytest.fixture(scope="module")
def reference(deployed: Deployed) -> LLM:
    return LLM(str(deployed.model), num_kv_blocks=128)


MODEL = "tiny"


def client(deployed: Deployed, key: str = "key-alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=deployed.base_url + "/v1", api_key=key, max_retries=0)


def expected(reference: LLM, prompt: str, n: int) -> tuple[str, int]:
    out = reference.generate([prompt], SamplingParams(max_tokens=n, temperature=0))
    return out[0].outputs[0].text, len(out[0].outputs[0].token_ids)


fallbacks_before: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def count_fallbacks_before(deployed: Deployed) -> None:
    """Fallbacks so far (other test modules share the deployment)."""
    import time

    time.sleep(1.0)  # one heartbeat period for earlier counters to arrive
    data = httpx.get(deployed.base_url + "/status").json()
    fallbacks_before.update({i["name"]: i["fallbacks"] for i in data["instances"]})


@pytest.mark.parametrize(("prompt", "route"), [(SHORT, "pd-p"), (LONG, "prfaas")])
def test_completion_matches_offline_engine_on_both_paths(
    deployed: Deployed, reference: LLM, prompt: str, route: str
) -> None:
    raw = client(deployed).completions.with_raw_response.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=12,
        temperature=0,
    )
    assert raw.headers["x-prfaas-route"].split()[0] == route
    completion = raw.parse()
    text, num_tokens = expected(reference, prompt, 12)
    assert completion.choices[0].text == text
    assert completion.usage is not None and completion.usage.completion_tokens == num_tokens


def test_streaming_matches_non_streaming(deployed: Deployed, reference: LLM) -> None:
    stream = client(deployed).completions.create(
        model=MODEL,
        prompt=LONG,
        max_tokens=10,
        temperature=0,
        stream=True,
    )
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert text == expected(reference, LONG, 10)[0]


def test_repeated_long_prefix_reports_cached_tokens(deployed: Deployed) -> None:
    c = client(deployed)
    prompt = LONG + " w5 w6"
    c.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    # Cache events reach the gateway with the next heartbeat (every 0.5 s).
    cached = 0
    for _ in range(20):
        raw = c.completions.with_raw_response.create(
            model=MODEL, prompt=prompt, max_tokens=2, temperature=0
        )
        usage = raw.parse().usage
        assert usage is not None
        details = usage.prompt_tokens_details
        cached = details.cached_tokens if details and details.cached_tokens else 0
        if cached:
            break
        import time

        time.sleep(0.25)
    assert cached >= 64  # 4 full blocks of 16 out of 82 tokens


def test_residency_pinned_tenant_never_goes_remote(deployed: Deployed) -> None:
    raw = client(deployed, "key-bob").completions.with_raw_response.create(
        model=MODEL, prompt=LONG, max_tokens=4, temperature=0
    )
    assert raw.headers["x-prfaas-route"].split()[0] == "pd-p"
    assert "prfaas-0" not in raw.headers["x-prfaas-route"]


def test_missing_or_wrong_key_gets_401(deployed: Deployed) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(deployed, "wrong").completions.create(model=MODEL, prompt=SHORT, max_tokens=2)
    r = httpx.post(
        deployed.base_url + "/v1/completions", json={"model": "default", "prompt": SHORT}
    )
    assert r.status_code == 401 and "error" in r.json()


def test_status_shows_fleet_and_threshold(deployed: Deployed) -> None:
    data = httpx.get(deployed.base_url + "/status").json()
    assert data["threshold_tokens"] == THRESHOLD_TOKENS
    roles = {i["name"]: (i["cluster"], i["role"], i["healthy"]) for i in data["instances"]}
    assert roles == {
        "pd-p-0": ("local", "prefill", True),
        "pd-d-0": ("local", "decode", True),
        "prfaas-0": ("remote", "prefill", True),
    }


def test_no_transfer_fell_back(deployed: Deployed) -> None:
    """Every KV hand-off above landed: no decode worker had to prefill locally."""
    import time

    time.sleep(1.0)  # one heartbeat period for the counters to arrive
    data = httpx.get(deployed.base_url + "/status").json()
    assert {i["name"]: i["fallbacks"] for i in data["instances"]} == fallbacks_before


def test_metrics_show_routes_transfers_and_threshold(deployed: Deployed) -> None:
    client(deployed).completions.create(model=MODEL, prompt=LONG, max_tokens=2, temperature=0)
    text = httpx.get(deployed.base_url + "/metrics").text
    assert f"prfaas_threshold_tokens {float(THRESHOLD_TOKENS)}" in text
    assert 'prfaas_kv_transfers_total{link="remote",outcome="ok"}' in text
    assert 'prfaas_kv_transfers_total{link="local",outcome="ok"}' in text
    assert 'prfaas_instance_queue_depth{cluster="local",instance="pd-d-0",role="decode"}' in text
    assert "prfaas_time_to_first_token_seconds_bucket" in text
    # Link figures come from the sending instance's own monitor, in its heartbeats. An
    # 80-token transfer of the tiny model is too small to measure goodput on (the monitor
    # says nothing below 1 MiB), but its bytes on the wire must be reported.
    wire_bytes = 0.0
    for _ in range(20):  # a few heartbeat periods
        text = httpx.get(deployed.base_url + "/metrics").text
        lines = [
            x for x in text.splitlines() if x.startswith('prfaas_link_wire_bytes{link="remote"}')
        ]
        wire_bytes = float(lines[0].split()[-1]) if lines else 0.0
        if wire_bytes > 0:
            break
        time.sleep(0.25)
    assert wire_bytes > 0
    assert 'prfaas_link_goodput_gbps{link="remote"}' in text
