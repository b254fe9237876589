"""Readiness that tells the truth, on a real `prfaas serve` (gateway, three workers loading
the tiny checkpoint, the emulated WAN link, start-up profiling of t) polled from its first
second: ``/health`` is 503 with a reason while anything is missing, and every 200 is
followed by requests that succeed on both paths (the PD prefill and the remote one). The
banner comes only once ready and never shows an API key (keys from ``--api-key-file``)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx
import openai
from tests.deploy_helper import START_S, launch, stop_process, topology
from tests.serving.conftest import CLUSTER_TOKEN

from prfaas.deploy.launcher import free_port

KEY = "sk-readiness-0123456789"
SHORT = " ".join(f"w{i}" for i in range(10, 20))
LONG = " ".join(f"w{(7 * i) % 200 + 3}" for i in range(80))
CHECKED_200S = 3  # how many 200s are each followed by requests before the test stops


def poll(url: str) -> tuple[int | None, str]:
    """``/health``: its status (None: nothing listens yet) and its reason."""
    try:
        r = httpx.get(url + "/health", timeout=5.0)
    except httpx.TransportError:
        return None, ""
    return r.status_code, r.json().get("reason", "")


def test_every_200_from_health_is_followed_by_served_requests(
    tiny_llama: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# the test tenant\n\n{KEY}=alice\n")
    keys.chmod(0o600)
    port = free_port()
    # t not pinned: start-up profiling runs, and health must wait for it too.
    config = topology(tiny_llama, port, threshold_tokens=None)
    proc, out = launch(config, tmp_path, CLUSTER_TOKEN, args=["--api-key-file", str(keys)])
    url = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    reasons: list[str] = []
    served: list[str] = []
    try:
        end = time.monotonic() + START_S
        while len(served) < 2 * CHECKED_200S:
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < end, f"never ready; reasons {set(reasons)}"
            status, reason = poll(url)
            if status == 503:
                assert reason, "a 503 from /health says why"
                assert "prfaas is serving" not in out.read_text(), "banner before ready"
                reasons.append(reason)
            elif status == 200:
                for prompt in (SHORT, LONG):
                    done = client.completions.create(
                        model="tiny", prompt=prompt, max_tokens=4, temperature=0
                    )
                    assert done.choices[0].finish_reason in {"length", "stop"}
                    served.append(done.choices[0].text)
                continue
            else:
                assert status is None, f"/health answered {status}"
            time.sleep(0.05)
        assert any("no healthy instance yet" in r for r in reasons), reasons
        with contextlib.suppress(TimeoutError):
            wait_for_banner(out, 30.0)
        printed = out.read_text()
        assert "prfaas is serving" in printed
        assert KEY not in printed  # the curl line shows a placeholder, not the key
        assert "$PRFAAS_API_KEY" in printed
        bad = openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0)
        try:
            bad.completions.create(model="tiny", prompt=SHORT, max_tokens=1)
            raise AssertionError("a key not in the file was accepted")
        except openai.AuthenticationError:
            pass
    finally:
        stop_process(proc)


def wait_for_banner(out: Path, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while "prfaas is serving" not in out.read_text():
        if time.monotonic() > end:
            raise TimeoutError
        time.sleep(0.1)
