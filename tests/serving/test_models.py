"""Several models and a blue-green rollout on a real `prfaas serve` deployment (issue #18).

One deployment, started once for this module (it earns its start-up: the package's shared
deployment serves one model, and a rollout would change what its other tests see): model
``tiny`` version ``v1`` on the standard topology (PD cluster ``local``, PrfaaS cluster
``remote``, an emulated TLS link), its version ``green`` (other random weights of the same
shape, weight 0 at start) on the PD cluster ``green``, and model ``tiny-b`` (a tiny Qwen3) on
the PD cluster ``b``. Every answer is compared with the offline engine of the checkpoint
that served it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tests.conftest import make_tiny_checkpoint
from tests.deploy_helper import deploy, gateway_tls, session_certs, topology
from tests.serving.conftest import CLUSTER_TOKEN

from prfaas import LLM, SamplingParams
from prfaas.deploy.launcher import free_port
from prfaas.messages import TOKEN_HEADER, WorkerCheck

SHORT = " ".join(f"w{i}" for i in range(10, 20))  # 10 tokens: below t, prefilled locally
LONG = " ".join(f"w{(7 * i) % 200 + 3}" for i in range(80))  # 80 tokens: above t
VERSION = "x-prfaas-model-version"
SESSION = "x-prfaas-session"
MAX_TOKENS = 8


def small(instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seven workers on a shared machine: small KV pools, one thread each."""
    return [i | {"kv_cache_gb": 0.05, "num_threads": 1} for i in instances]


def pd(name: str, prefix: str) -> dict[str, Any]:
    instances = [
        {"name": f"{prefix}-p-0", "role": "prefill"},
        {"name": f"{prefix}-d-0", "role": "decode"},
    ]
    return {"name": name, "kind": "pd", "instances": small(instances)}


class Fleet:
    def __init__(self, base_url: str, checkpoints: dict[str, Path]) -> None:
        self.base_url = base_url
        self.checkpoints = checkpoints  # name@version -> its checkpoint
        self._offline: dict[str, LLM] = {}
        self._answers: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key="unused", max_retries=0)

    def offline(self, key: str, prompt: str) -> str:
        """The offline engine's greedy answer of version ``key`` (computed once)."""
        with self._lock:
            if (key, prompt) not in self._answers:
                if key not in self._offline:
                    self._offline[key] = LLM(str(self.checkpoints[key]), num_kv_blocks=128)
                params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0)
                out = self._offline[key].generate([prompt], params)
                self._answers[key, prompt] = out[0].outputs[0].text
            return self._answers[key, prompt]

    def admin(self) -> dict[str, dict[str, Any]]:
        r = httpx.get(
            self.base_url + "/admin/rollout", headers={TOKEN_HEADER: CLUSTER_TOKEN}, timeout=10
        )
        assert r.status_code == 200, r.text
        return {f"{v['model']}@{v['version']}": v for v in r.json()["versions"]}


@pytest.fixture(scope="module")
def fleet(
    tiny_llama: Path, tiny_qwen3: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("models")
    green = make_tiny_checkpoint(tmp / "tiny-llama-green", "llama", seed=1)
    config = topology(
        tiny_llama,
        free_port(),
        threshold_tokens=32,
        link={"rtt_ms": 4.0},
        kv_deadline_s=60.0,
        canary={"enabled": False},  # its probes would refill the drained version's caches
        models=[
            {
                "name": "tiny",
                "version": "green",
                "model": str(green),
                "weight": 0,
                "clusters": [pd("green", "g")],
            },
            {"name": "tiny-b", "model": str(tiny_qwen3), "clusters": [pd("b", "b")]},
        ],
    )
    for cluster in config["clusters"]:
        cluster["instances"] = small(cluster["instances"])
    names = [c["name"] for c in config["clusters"]] + ["green", "b"]
    config["certs_dir"] = str(session_certs(names))  # a bundle for every model's clusters
    checkpoints = {"tiny@v1": tiny_llama, "tiny@green": green, "tiny-b@v1": tiny_qwen3}
    with deploy(config, tmp, CLUSTER_TOKEN) as running:
        yield Fleet(running.base_url, checkpoints)


def complete(
    fleet: Fleet, model: str, prompt: str, session: str | None = None
) -> tuple[str, str, int]:
    """(the version that served it, its text, its cached prompt tokens)."""
    headers = {SESSION: session} if session else None
    raw = fleet.client().completions.with_raw_response.create(
        model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, extra_headers=headers
    )
    completion = raw.parse()
    assert completion.usage is not None
    details = completion.usage.prompt_tokens_details
    cached = details.cached_tokens if details and details.cached_tokens else 0
    return raw.headers[VERSION], completion.choices[0].text, cached


def test_two_models_side_by_side_answer_like_their_offline_engines(fleet: Fleet) -> None:
    listed = [m.id for m in fleet.client().models.list().data]
    assert listed == ["tiny", "tiny-b"]
    for model in ("tiny", "tiny-b"):
        for prompt in (SHORT, LONG):
            version, text, _ = complete(fleet, model, prompt)
            assert version == f"{model}@v1"
            assert text == fleet.offline(version, prompt)
    # Not vacuous: the two models answer the same prompt differently.
    assert fleet.offline("tiny@v1", LONG) != fleet.offline("tiny-b@v1", LONG)


def test_no_cached_token_crosses_models(fleet: Fleet) -> None:
    prompt = " ".join(f"w{(11 * i) % 200 + 3}" for i in range(70))  # seen by neither model
    for _ in range(20):  # tiny caches the prompt (events arrive with a heartbeat)
        if complete(fleet, "tiny", prompt)[2] > 0:
            break
        time.sleep(0.25)
    else:
        pytest.fail("tiny never reported a prefix hit")
    version, text, cached = complete(fleet, "tiny-b", prompt)
    assert cached == 0 and text == fleet.offline(version, prompt)
    hit = 0
    for _ in range(20):  # ... while tiny-b does reuse its own cache
        hit = complete(fleet, "tiny-b", prompt)[2]
        if hit:
            break
        time.sleep(0.25)
    assert hit >= 64
    # Across the fleet: each version's instances share one fingerprint, no two versions do,
    # and each version's kv index holds blocks of its own instances only.
    status = fleet.admin()
    fingerprints = {key: {i["fingerprint"] for i in v["instances"]} for key, v in status.items()}
    assert all(len(f) == 1 for f in fingerprints.values()), fingerprints
    assert len({next(iter(f)) for f in fingerprints.values()}) == 3
    assert {i["name"] for i in status["tiny-b@v1"]["instances"]} == {"b-p-0", "b-d-0"}


def test_a_rollout_under_steady_traffic(fleet: Fleet) -> None:
    """0 -> 100 % under two client threads of multi-turn sessions: no request fails, each
    answer is the offline answer of the version that served it, a session never goes back
    to the old version, and the old version drains to idle with its caches freed."""
    prompts = [SHORT, LONG, LONG + " w11", SHORT + " w12 w13"]
    served: list[tuple[str, str, str, str]] = []  # (session, version, prompt, text)
    errors: list[BaseException] = []
    stop = threading.Event()

    def traffic(thread: int) -> None:
        turn = 0
        while not stop.is_set():
            session = f"t{thread}-s{turn // 3}"  # three turns per conversation
            prompt = prompts[turn % len(prompts)]
            try:
                version, text, _ = complete(fleet, "tiny", prompt, session)
            except BaseException as e:
                errors.append(e)
                return
            served.append((session, version, prompt, text))
            turn += 1

    threads = [threading.Thread(target=traffic, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        for weight in (0, 25, 50, 75, 100):
            r = httpx.post(
                fleet.base_url + "/admin/rollout",
                json={"model": "tiny", "version": "green", "weight": weight},
                headers={TOKEN_HEADER: CLUSTER_TOKEN},
                timeout=10,
            )
            assert r.status_code == 200, r.text
            time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert len(served) >= 10
    versions = [v for _, v, _, _ in served]
    assert "tiny@v1" in versions and "tiny@green" in versions
    assert versions[-1] == "tiny@green"
    for _, version, prompt, text in served:
        assert text == fleet.offline(version, prompt), (version, prompt)
    by_session: dict[str, list[str]] = {}
    for session, version, _, _ in served:
        by_session.setdefault(session, []).append(version)
    for seen in by_session.values():  # once on green, never back
        if "tiny@green" in seen:
            assert "tiny@v1" not in seen[seen.index("tiny@green") :], seen
    # The old version drains: idle, its caches freed, its kv index empty.
    old = {"pd-p-0", "pd-d-0", "prfaas-0"}
    deadline = time.monotonic() + 60
    while True:
        status = fleet.admin()["tiny@v1"]
        emptied = all(i["kv_index_blocks"] == 0 for i in status["instances"])
        if status["drained"] and status["freed_blocks"] > 0 and emptied:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert {i["name"] for i in status["instances"]} == old
    with httpx.Client(verify=gateway_tls(), timeout=10) as client:
        workers = httpx.get(fleet.base_url + "/status", timeout=10).json()["instances"]
        for worker in (w for w in workers if w["name"] in old):
            r = client.get(
                worker["http_url"] + "/internal/check", headers={TOKEN_HEADER: CLUSTER_TOKEN}
            )
            check = WorkerCheck.decode(r.content)
            assert check.idle_clean and check.blocks.cached == 0, check
