"""Regions and regional failover (issue #18) on fake workers (``tests/fakes``: the gateway's
routing and residency, not engines; ``tests/serving/test_regions_serve.py`` runs real ones).

Two regions, ``a`` and ``b``, each a PD cluster, and a PrfaaS cluster ``pf`` in a region of
its own (``p``) linked to both; three tenants: ``pinned`` (regions ``[a]``), ``ab``
(``[a, b]``) and ``free`` (any). When region ``a``'s decode instances die, ``ab`` goes on in
``b``, ``pinned`` gets a 503 in the OpenAI format and is never served from ``b``, and the
audit log shows no request of a tenant touching a cluster outside its regions; when ``a``
comes back, traffic returns to it.
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
import openai
import pytest

from prfaas.gateway.middleware import ROUTE_HEADER
from tests.fakes.cluster import FakeCluster, fake_cluster
from tests.fakes.worker import FakeWorker
from tests.gateway.test_dispatch import LONG, SHORT, wait_until

CLUSTERS: dict[str, tuple[str, str | None]] = {
    "a-pd": ("pd", "a"),
    "b-pd": ("pd", "b"),
    "pf": ("prfaas", "p"),
}
TENANTS = [
    {"name": "pinned", "api_keys": ["key-pinned"], "regions": ["a"]},
    {"name": "ab", "api_keys": ["key-ab"], "regions": ["a", "b"]},
    {"name": "free", "api_keys": ["key-free"]},
]
ALLOWED = {"pinned": {"a-pd"}, "ab": {"a-pd", "b-pd"}, "free": {"a-pd", "b-pd", "pf"}}


def workers() -> list[FakeWorker]:
    return [
        FakeWorker("a-p", "prefill", "a-pd"),
        FakeWorker("a-d", "decode", "a-pd"),
        FakeWorker("b-p", "prefill", "b-pd"),
        FakeWorker("b-d", "decode", "b-pd"),
        FakeWorker("pf-0", "prefill", "pf"),
    ]


@contextlib.contextmanager
def regions(tmp_path: Path, **deploy: Any) -> Iterator[FakeCluster]:
    cluster = fake_cluster(
        workers(), layout=CLUSTERS, tenants=TENANTS, audit_log=tmp_path / "audit.jsonl", **deploy
    )
    with cluster as c:
        # The first registered may have missed its heartbeat deadline while the last
        # registered (a loaded machine): start once the heartbeat loop has reached them all.
        all_healthy(c)
        yield c


def all_healthy(c: FakeCluster) -> None:
    fleet = c.deployment.fleet
    wait_until(lambda: all(fleet.healthy(n) for n in c.servers), timeout_s=10.0)


def complete(c: FakeCluster, tenant: str, prompt: str, max_tokens: int = 4) -> httpx.Response:
    body = {"model": "fake", "prompt": prompt, "max_tokens": max_tokens}
    headers = {"Authorization": f"Bearer key-{tenant}"}
    return httpx.post(c.url + "/v1/completions", json=body, headers=headers, timeout=30.0)


def route(c: FakeCluster, tenant: str, prompt: str) -> str:
    r = complete(c, tenant, prompt)
    assert r.status_code == 200, r.text
    return r.headers[ROUTE_HEADER]


def kill(c: FakeCluster, name: str) -> None:
    """The worker's process is gone; wait until the gateway has seen its heartbeats stop."""
    c.stop(name)
    wait_until(lambda: not c.deployment.fleet.healthy(name), timeout_s=20.0)


def audit(tmp_path: Path, event: str) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [line for line in map(json.loads, lines) if line["event"] == event]


def assert_residency_held(tmp_path: Path) -> None:
    """No request line and no KV transfer of a tenant names a cluster outside its regions."""
    requests = audit(tmp_path, "request")
    assert requests
    for line in requests:
        assert set(line["clusters"]) <= ALLOWED[line["tenant"]], line
    for line in audit(tmp_path, "kv_transfer"):
        ends = {line["source_cluster"], line["destination_cluster"]}
        assert ends <= ALLOWED[line["tenant"]], line


def test_regional_failover_keeps_every_tenant_inside_its_regions(tmp_path: Path) -> None:
    with regions(tmp_path) as c:
        # Twice the default: on a loaded machine the fakes' heartbeat loop may lag, and a
        # healthy region must not look down.
        c.deployment.fleet.heartbeat_timeout_s = 6.0
        # Everyone starts in its first region; only the unrestricted tenant may offload.
        assert route(c, "pinned", SHORT) == "pd-p prefill=a-p decode=a-d"
        assert route(c, "ab", SHORT) == "pd-p prefill=a-p decode=a-d"
        assert route(c, "pinned", LONG) == "pd-p prefill=a-p decode=a-d"  # pf is not in a
        assert route(c, "free", LONG) == "prfaas prefill=pf-0 decode=a-d"

        kill(c, "a-d")
        assert route(c, "ab", SHORT) == "pd-p prefill=b-p decode=b-d"
        assert route(c, "ab", LONG) == "pd-p prefill=b-p decode=b-d"
        assert route(c, "free", LONG) == "prfaas prefill=pf-0 decode=b-d"
        wait_until(lambda: len(c.workers["pf-0"].received.prefills) == 2)
        assert c.workers["pf-0"].received.prefills[-1].target.link == "pf->b-pd"
        client = openai.OpenAI(base_url=c.url + "/v1", api_key="key-pinned", max_retries=0)
        with pytest.raises(openai.APIStatusError) as refused:
            client.completions.create(model="fake", prompt=SHORT, max_tokens=4)
        assert refused.value.status_code == 503
        error = refused.value.body
        assert isinstance(error, dict) and error["type"] == "service_unavailable"
        assert "no allowed region can serve" in error["message"]

        status = httpx.get(c.url + "/status").json()["regions"]
        assert [(r["name"], r["state"], r["healthy_decode"]) for r in status] == [
            ("a", "down", 0),
            ("b", "serving", 1),
        ]
        metrics = httpx.get(c.url + "/metrics").text
        assert 'prfaas_region_state{region="a",state="down"} 1.0' in metrics
        assert 'prfaas_region_requests_total{home_region="a",region="b"} 3.0' in metrics
        assert 'prfaas_region_refused_total{home_region="a"} 1.0' in metrics

        # Region a comes back: new requests return to it.
        assert c.register(c.workers["a-d"]) == 200
        all_healthy(c)
        assert route(c, "ab", SHORT) == "pd-p prefill=a-p decode=a-d"
        assert route(c, "free", SHORT) == "pd-p prefill=a-p decode=a-d"
        assert route(c, "pinned", SHORT) == "pd-p prefill=a-p decode=a-d"

    # Nothing of pinned's ever reached region b or the PrfaaS cluster.
    assert_residency_held(tmp_path)
    pinned = {
        line["request_id"] for line in audit(tmp_path, "request") if line["tenant"] == "pinned"
    }
    outcomes = [
        line["outcome"] for line in audit(tmp_path, "request") if line["tenant"] == "pinned"
    ]
    assert sorted(outcomes) == ["refused", "routed", "routed", "routed"]
    for name in ("b-p", "b-d", "pf-0"):
        got = c.workers[name].received
        assert not {cmd.request_id for cmd in [*got.prefills, *got.decodes]} & pinned, name
    routed = [line for line in audit(tmp_path, "request") if line["outcome"] == "routed"]
    away = [line for line in routed if line["region"] != line["home_region"]]
    assert {(line["tenant"], line["region"], line["home_region"]) for line in away} == {
        ("ab", "b", "a"),
        ("free", "b", "a"),
    }


def test_a_full_region_spills_its_tenants_to_their_next_region(tmp_path: Path) -> None:
    with regions(tmp_path, overload={"max_inflight_per_decode": 1}) as c:
        held = asyncio.Event()
        c.workers["a-d"].behaviour.hold_decode = held  # its one slot stays taken
        answers: list[httpx.Response] = []
        first = threading.Thread(target=lambda: answers.append(complete(c, "ab", SHORT)))
        first.start()
        admission = c.deployment.app.state.admission
        wait_until(lambda: admission.by_instance.get("a-d") == 1, timeout_s=10.0)
        status = httpx.get(c.url + "/status").json()["regions"]
        assert [r["state"] for r in status] == ["full", "serving"]
        assert route(c, "ab", SHORT) == "pd-p prefill=b-p decode=b-d"
        server = c.servers["a-d"]
        assert server.loop is not None
        server.loop.call_soon_threadsafe(held.set)
        first.join(30)
        assert answers and answers[0].headers[ROUTE_HEADER] == "pd-p prefill=a-p decode=a-d"
        wait_until(lambda: not admission.by_instance)
        assert route(c, "ab", SHORT) == "pd-p prefill=a-p decode=a-d"  # back home


def test_decode_failover_resumes_only_inside_the_tenants_regions(tmp_path: Path) -> None:
    with regions(tmp_path) as c:
        for w in c.workers.values():
            w.behaviour.tokens = 8
        c.workers["a-d"].behaviour.end_early = True  # a-d's streams break before their end
        r = complete(c, "ab", SHORT, max_tokens=8)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8
        [resumed] = c.workers["b-d"].received.decodes
        assert resumed.resume_token_ids == [3 + i for i in range(7)]
        r = complete(c, "pinned", SHORT, max_tokens=8)
        assert r.status_code == 502  # nowhere in region a to resume
        assert len(c.workers["b-d"].received.decodes) == 1
    [moved] = [line for line in audit(tmp_path, "request") if line["outcome"] == "resumed"]
    assert (moved["tenant"], moved["clusters"], moved["region"]) == ("ab", ["b-pd"], "b")
    assert_residency_held(tmp_path)
