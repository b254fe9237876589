"""The canary on real workers (`prfaas serve`, real TCP and TLS): on the embedded default
(SmolLM2) with raw links every path gives its reference's tokens and logprobs; on tiny
random-weight models, a quantized link keeps its bound; a decode worker switched to
recompute prompts whose KV it was sent is flagged as fake disaggregation and quarantined,
and returns when switched back; on a hybrid model, a decode worker that zeroes the imported
linear-attention state still decodes but diverges, and the canary catches that too. The
faults are the workers' test-only switches (``PRFAAS_TEST_FAULTS=1``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from prfaas.deploy.launcher import free_port
from prfaas.messages import TOKEN_HEADER, FaultSwitch
from tests.deploy_helper import deploy, gateway_tls, topology
from tests.engine.hybrid_helpers import PATTERNS, save_kimi_checkpoint

TOKEN = "canary-test-token"
# Word-level prompts for the tiny models' tokenizer: one block, a few, and a longer one.
PROMPTS = [
    " ".join(f"w{3 + (i * 7 + k) % 250}" for i in range(n)) for k, n in ((1, 9), (2, 40), (3, 100))
]
CANARY = {"enabled": False, "max_tokens": 8, "quarantine": True, "prompts": PROMPTS}


def run_round(base_url: str) -> dict[str, dict[str, Any]]:
    r = httpx.post(base_url + "/admin/canary", headers={TOKEN_HEADER: TOKEN}, timeout=300.0)
    assert r.status_code == 200, r.text
    return {p["path"]: p for p in r.json()["paths"]}


def switch(base_url: str, worker: str, fault: str, on: bool) -> None:
    status = httpx.get(base_url + "/status", timeout=10.0).json()
    url = next(i["http_url"] for i in status["instances"] if i["name"] == worker)
    body = FaultSwitch(fault=fault, on=on).encode()  # type: ignore[arg-type]
    # A worker's control port: HTTPS, a gateway's certificate.
    r = httpx.post(
        url + "/internal/fault", content=body, headers={TOKEN_HEADER: TOKEN}, verify=gateway_tls()
    )
    assert r.status_code == 200, r.text


def remote(paths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (path,) = [p for name, p in paths.items() if name.startswith("prfaas-0")]
    return path


def test_every_raw_path_of_the_embedded_default_is_consistent(
    cache_dir: Path, tmp_path: Path
) -> None:
    from prfaas.model.loader import resolve_model_folder

    smollm2 = resolve_model_folder(None, cache_dir)  # the embedded GGUF, converted once
    prompts = ["What is the capital of France?", "Write one sentence about the sea. " * 6]
    canary = {**CANARY, "max_tokens": 6, "prompts": prompts}
    config = topology(smollm2, free_port(), served_model_name="smollm2", canary=canary)
    with deploy(config, tmp_path, TOKEN) as running:
        paths = run_round(running.base_url)
    assert len(paths) == 3, paths  # pd-d-0's reference, from pd-p-0, from prfaas-0
    for name, p in paths.items():
        assert p["ok"] and not p["fake_disaggregation"], p
        if "reference" not in name:  # raw KV: the reference's tokens, logprobs within 1e-4
            assert p["codec"] == "raw" and p["first_divergence"] is None, p
            assert p["max_abs_dlogprob"] <= 1e-4, p


def test_every_path_keeps_its_bound_and_fake_disaggregation_is_caught(
    tiny_llama: Path, tmp_path: Path
) -> None:
    # The WAN link quantizes (int8); inside the PD cluster KV travels raw.
    config = topology(tiny_llama, free_port(), canary=CANARY, link={"codec": "int8"})
    with deploy(config, tmp_path, TOKEN, env={"PRFAAS_TEST_FAULTS": "1"}) as running:
        paths = run_round(running.base_url)
        assert len(paths) == 3, paths  # pd-d-0's reference, from pd-p-0, from prfaas-0
        assert all(p["ok"] for p in paths.values()), paths
        raw = paths["pd-p-0 -[local, raw]-> pd-d-0"]
        assert raw["first_divergence"] is None and raw["max_abs_dlogprob"] <= 1e-4, raw
        int8 = remote(paths)
        assert int8["codec"] == "int8" and int8["max_abs_dlogprob"] > 0, int8  # it is lossy

        switch(running.base_url, "pd-d-0", "ignore_kv", True)
        paths = run_round(running.base_url)
        assert paths["pd-d-0 (reference)"]["ok"]
        for name, p in paths.items():
            if "reference" not in name:
                assert p["fake_disaggregation"] and p["quarantined"], p
                assert p["first_divergence"] is None  # same tokens: only the count tells

        switch(running.base_url, "pd-d-0", "ignore_kv", False)
        paths = run_round(running.base_url)
        assert all(p["ok"] and not p["quarantined"] for p in paths.values()), paths


@pytest.fixture(scope="module")
def kimi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_kimi_checkpoint(tmp_path_factory.mktemp("kimi-canary"), *PATTERNS["3to1_moe"])


def test_a_zeroed_linear_attention_state_is_caught_on_a_hybrid_model(
    kimi: Path, tmp_path: Path
) -> None:
    config = topology(kimi, free_port(), served_model_name="kimi", canary=CANARY)
    with deploy(config, tmp_path, TOKEN, env={"PRFAAS_TEST_FAULTS": "1"}) as running:
        assert remote(run_round(running.base_url))["ok"]
        switch(running.base_url, "pd-d-0", "zero_state", True)
        flagged = remote(run_round(running.base_url))
        assert not flagged["ok"] and flagged["quarantined"], flagged
        assert flagged["first_divergence"] is not None and not flagged["fake_disaggregation"]
        switch(running.base_url, "pd-d-0", "zero_state", False)
        assert remote(run_round(running.base_url))["ok"]
