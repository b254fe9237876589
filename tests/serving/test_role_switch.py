"""A PD worker switches role (drain, then switch) while requests run: none is lost."""

from __future__ import annotations

import threading

import httpx
from tests.serving.conftest import CLUSTER_TOKEN, Deployed

from prfaas import LLM, SamplingParams
from prfaas.messages import TOKEN_HEADER, RoleSwitch

PROMPTS = [" ".join(f"w{(i * 13 + j) % 200 + 3}" for j in range(5 + 9 * i)) for i in range(8)]


def switch(deployed: Deployed, name: str, role: str) -> dict[str, object]:
    r = httpx.post(
        deployed.base_url + "/internal/role",
        timeout=120,
        headers={TOKEN_HEADER: CLUSTER_TOKEN},
        content=RoleSwitch(name=name, role=role).encode(),
    )  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_role_switch_under_load_loses_no_request(deployed: Deployed) -> None:
    reference = LLM(str(deployed.model), num_kv_blocks=128)
    params = SamplingParams(max_tokens=24, temperature=0)
    expected = [o.outputs[0].text for o in reference.generate(list(PROMPTS), params)]
    results: dict[int, str] = {}
    errors: list[str] = []

    def run(i: int) -> None:
        r = httpx.post(
            deployed.base_url + "/v1/completions",
            timeout=120,
            headers={"Authorization": "Bearer key-alice"},
            json={"model": "tiny", "prompt": PROMPTS[i], "max_tokens": 24, "temperature": 0},
        )
        if r.status_code != 200:
            errors.append(f"{i}: {r.status_code} {r.text}")
        else:
            results[i] = r.json()["choices"][0]["text"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads[:4]:
        t.start()
    info = switch(deployed, "pd-p-0", "decode")  # PD-P drains, becomes a second decoder
    assert info["role"] == "decode"
    for t in threads[4:]:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [results[i] for i in range(len(PROMPTS))] == expected
    status = httpx.get(deployed.base_url + "/status").json()
    roles = {i["name"]: i["role"] for i in status["instances"]}
    assert roles["pd-p-0"] == "decode"
    assert switch(deployed, "pd-p-0", "prefill")["role"] == "prefill"  # and back
