"""`prfaas serve` with no pinned threshold: t comes from start-up profiling, lands inside the
model's context, and both paths serve real traffic with it (the official openai client)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from tests.serving.conftest import deploy_yaml, serving

from prfaas.deploy.launcher import free_port

MAX_MODEL_LEN = 512  # the tiny checkpoint's max_position_embeddings


@pytest.fixture(scope="module")
def served(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The base URL and the line `prfaas serve` printed about t."""
    tmp = tmp_path_factory.mktemp("profiled")
    port = free_port()
    spec = deploy_yaml(tiny_llama, port)
    spec["policy"] = {"name": "prfaas"}  # no threshold_tokens: profiled
    with serving(spec, tmp, tiny_llama, until="threshold t =") as deployed:
        yield deployed.base_url, deployed.lines[-1]


def words(n: int) -> str:
    return " ".join(f"w{(11 * i) % 250 + 3}" for i in range(n))


def test_t_is_profiled_and_inside_the_context(served: tuple[str, str]) -> None:
    url, printed = served
    data = httpx.get(url + "/status", timeout=10).json()
    t = data["threshold_tokens"]
    assert data["threshold_source"] == "profiled"
    assert f"threshold t = {t:.0f} tokens (profiled" in printed
    assert 32 <= t <= 0.75 * MAX_MODEL_LEN
    measured = data["threshold"]["prefill_s"]
    assert set(measured) == {"local", "remote"}
    metrics = httpx.get(url + "/metrics", timeout=10).text
    assert f"prfaas_threshold_tokens {t}" in metrics
    out = subprocess.run(
        [sys.executable, "-m", "prfaas.cli", "status", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "t from: profiled" in out and "prefill remote (prfaas-0)" in out


def test_the_control_loop_runs_by_itself(served: tuple[str, str]) -> None:
    url, _ = served
    deadline = time.monotonic() + 30
    control = httpx.get(url + "/status", timeout=10).json()["control"]
    while control["short_ticks"] < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        control = httpx.get(url + "/status", timeout=10).json()["control"]
    assert control["running"] and control["short_ticks"] >= 2  # every second by default
    assert control["egress"]["capacity_gbps"] == 1.0 and control["n_p"] == 1


def test_long_prompts_go_remote_and_short_ones_local(served: tuple[str, str]) -> None:
    url, _ = served
    t = httpx.get(url + "/status", timeout=10).json()["threshold_tokens"]
    client = openai.OpenAI(base_url=url + "/v1", api_key="key-alice", max_retries=0)
    for prompt, route in ((words(8), "pd-p"), (words(int(t) + 40), "prfaas")):
        raw = client.completions.with_raw_response.create(
            model="tiny", prompt=prompt, max_tokens=4, temperature=0
        )
        assert raw.headers["x-prfaas-route"].split()[0] == route
        assert raw.parse().choices[0].text is not None
