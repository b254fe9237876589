"""Several models and blue-green versions at the gateway, on fake workers (``tests/fakes``:
the gateway's routing, weights, stickiness and drain logic, not engines;
``tests/serving/test_models.py`` runs real ones and compares answers).

The fleet: model ``fake`` version ``v1`` on ``local``/``remote`` (the standard fakes), its
version ``green`` on the PD cluster ``green``, and model ``fake-b`` on the PD cluster ``b``;
each version's workers report a fingerprint of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prfaas.cli import main
from prfaas.messages import TOKEN_HEADER
from tests.fakes.cluster import FakeCluster, fake_cluster
from tests.fakes.worker import FakeWorker
from tests.gateway.test_dispatch import LONG, SHORT, fleet, wait_until

VERSION = "x-prfaas-model-version"
SESSION = "x-prfaas-session"


def pd(name: str, prefix: str, fingerprint: str) -> tuple[dict[str, Any], list[FakeWorker]]:
    workers = [
        FakeWorker(f"{prefix}-p-0", "prefill", name, fingerprint=fingerprint),
        FakeWorker(f"{prefix}-d-0", "decode", name, fingerprint=fingerprint),
    ]
    spec = {
        "name": name,
        "kind": "pd",
        "instances": [{"name": w.name, "role": w.role, "spawn": False} for w in workers],
    }
    return spec, workers


@contextlib.contextmanager
def models_fleet(green_weight: float = 0.0, **deploy: Any) -> Iterator[FakeCluster]:
    green, green_workers = pd("green", "g", "1" * 64)
    other, other_workers = pd("b", "b", "2" * 64)
    models = [
        {
            "name": "fake",
            "version": "green",
            "model": "unused",
            "weight": green_weight,
            "clusters": [green],
        },
        {"name": "fake-b", "model": "unused", "clusters": [other]},
    ]
    workers = [*fleet(), *green_workers, *other_workers]
    with fake_cluster(workers, models=models, **deploy) as c:
        for version in c.deployment.versions:  # a loaded machine delays the fakes' beats
            version.fleet.heartbeat_timeout_s = 30.0
        yield c


def complete(
    c: FakeCluster, prompt: str, model: str = "fake", session: str | None = None
) -> httpx.Response:
    body = {"model": model, "prompt": prompt, "max_tokens": 4}
    headers = {SESSION: session} if session else {}
    return httpx.post(c.url + "/v1/completions", json=body, headers=headers, timeout=30.0)


def rollout(
    c: FakeCluster, version: str, weight: float, token: str | None = None
) -> httpx.Response:
    body = {"model": "fake", "version": version, "weight": weight}
    headers = {TOKEN_HEADER: c.token if token is None else token}
    return httpx.post(c.url + "/admin/rollout", json=body, headers=headers, timeout=10.0)


def rollout_status(c: FakeCluster) -> dict[str, Any]:
    r = httpx.get(c.url + "/admin/rollout", headers={TOKEN_HEADER: c.token}, timeout=10.0)
    assert r.status_code == 200, r.text
    return {f"{v['model']}@{v['version']}": v for v in r.json()["versions"]}


def served_by(c: FakeCluster) -> dict[str, int]:
    """Decode streams each worker was sent."""
    return {name: len(w.received.decodes) for name, w in c.workers.items()}


def test_requests_route_by_model_to_its_own_workers() -> None:
    with models_fleet() as c:
        listed = httpx.get(c.url + "/v1/models", timeout=10.0).json()
        assert [m["id"] for m in listed["data"]] == ["fake", "fake-b"]
        for prompt in (SHORT, LONG):
            r = complete(c, prompt, model="fake-b")
            assert r.status_code == 200, r.text
            assert r.headers[VERSION] == "fake-b@v1" and r.json()["model"] == "fake-b"
            assert "b-d-0" in r.headers["x-prfaas-route"]
        r = complete(c, LONG)  # green has weight 0: v1, its remote prefill included
        assert r.headers[VERSION] == "fake@v1" and r.headers["x-prfaas-route"].startswith("prfaas")
        received = {
            n: len(w.received.prefills) + len(w.received.decodes) for n, w in c.workers.items()
        }
        assert received["g-p-0"] == received["g-d-0"] == 0
        assert received["b-d-0"] == 2 and received["prfaas-0"] == 1
        missing = complete(c, SHORT, model="no-such-model")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"


def test_the_rollout_route_shifts_new_requests_and_usage_names_the_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    usage = tmp_path / "usage.jsonl"
    with models_fleet(usage_log=str(usage)) as c:
        assert rollout(c, "green", 100, token="wrong").status_code == 401
        assert rollout(c, "red", 50).status_code == 400
        assert rollout(c, "green", 150).status_code == 400
        gone = httpx.post(
            c.url + "/admin/rollout",
            json={"model": "nope", "version": "v1", "weight": 1},
            headers={TOKEN_HEADER: c.token},
            timeout=10.0,
        )
        assert gone.status_code == 404
        assert complete(c, SHORT).headers[VERSION] == "fake@v1"
        # `prfaas rollout`, the operator's way to the same route.
        cli = ["rollout", "--url", c.url, "--token", c.token]
        assert main([*cli, "--model", "fake", "--weight", "green=100"]) == 0
        assert capsys.readouterr().out.strip() == "fake: v1 0%, green 100%"
        assert main([*cli, "--model", "fake", "--weight", "green"]) == 2
        assert main([*cli, "--model", "fake"]) == 2
        assert main(cli) == 0
        listed = capsys.readouterr().out.splitlines()[1:]
        assert [line.split()[:3] for line in listed] == [
            ["fake", "v1", "0%"],
            ["fake", "green", "100%"],
            ["fake-b", "v1", "100%"],
        ]
        before = served_by(c)
        for _ in range(3):
            assert complete(c, SHORT).headers[VERSION] == "fake@green"
        after = served_by(c)
        assert after["g-d-0"] - before["g-d-0"] == 3 and after["pd-d-0"] == before["pd-d-0"]
        shown = httpx.get(c.url + "/metrics", timeout=10.0).text
        assert 'prfaas_model_version_weight{model="fake",version="green"} 100.0' in shown
        assert 'prfaas_model_version_weight{model="fake",version="v1"} 0.0' in shown
        assert 'prfaas_model_version_drained{model="fake",version="v1"} 1.0' in shown
        # A line is written when its request is released, just after its answer went out.
        wait_until(lambda: len(usage.read_text().splitlines()) == 4, 30.0)
        lines = [json.loads(line) for line in usage.read_text().splitlines()]
        assert [line["model"] for line in lines] == ["fake@v1", *["fake@green"] * 3]


def test_a_session_keeps_its_version_at_a_split() -> None:
    with models_fleet(green_weight=50) as c:
        for session in ("chat-1", "chat-2", "chat-3"):
            versions = {complete(c, SHORT, session=session).headers[VERSION] for _ in range(4)}
            assert len(versions) == 1, versions
        many = {complete(c, SHORT, session=f"s{i}").headers[VERSION] for i in range(20)}
        assert many == {"fake@v1", "fake@green"}  # P(one version only) = 2 * 0.5**20


def test_a_request_keeps_its_version_through_a_rollout_and_the_old_one_drains() -> None:
    with models_fleet() as c:
        old = ("pd-p-0", "pd-d-0", "prfaas-0")
        c.workers["pd-d-0"].behaviour.cached_blocks = 5  # what its drain will free
        held = asyncio.Event()
        c.workers["pd-d-0"].behaviour.hold_decode = held
        answers: list[httpx.Response] = []
        request = threading.Thread(target=lambda: answers.append(complete(c, SHORT)))
        request.start()
        wait_until(lambda: len(c.workers["pd-d-0"].received.decodes) == 1, 30.0)
        assert rollout(c, "green", 100).status_code == 200
        assert complete(c, SHORT).headers[VERSION] == "fake@green"  # new ones: green
        status = rollout_status(c)["fake@v1"]
        assert status["held"] == 1 and not status["drained"]
        assert all(c.workers[n].received.cache_frees == 0 for n in old)  # not while it runs
        loop = c.servers["pd-d-0"].loop
        assert loop is not None
        loop.call_soon_threadsafe(held.set)
        request.join(10)
        assert answers[0].status_code == 200 and answers[0].headers[VERSION] == "fake@v1"
        wait_until(lambda: rollout_status(c)["fake@v1"]["drained"], 30.0)
        wait_until(lambda: all(c.workers[n].received.cache_frees >= 2 for n in old), 30.0)
        status = rollout_status(c)["fake@v1"]
        assert status["held"] == 0 and status["freed_blocks"] == 5
        assert all(i["inflight"] == 0 for i in status["instances"])
        assert {w.received.cache_frees for w in c.workers.values() if w.name not in old} == {0}


@pytest.mark.parametrize("stream", [False, True])
def test_decode_failover_never_leaves_the_version(stream: bool) -> None:
    with models_fleet(stream_stall_s=60.0) as c:
        c.workers["pd-d-0"].behaviour.end_early = True  # its body ends before the last token
        body = {"model": "fake", "prompt": SHORT, "max_tokens": 4, "stream": stream}
        r = httpx.post(c.url + "/v1/completions", json=body, timeout=30.0)
        # v1 has no other decode instance; green's healthy one is another version's.
        if stream:
            assert r.status_code == 200 and '"error"' in r.text
            assert r.headers[VERSION] == "fake@v1"
        else:
            assert r.status_code == 502
        assert len(c.workers["pd-d-0"].received.decodes) == 1
        assert c.workers["g-d-0"].received.decodes == []
        assert c.workers["b-d-0"].received.decodes == []
