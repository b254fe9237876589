"""Regional failover against real processes (issue #18): `prfaas serve` with two regions, each
a PD cluster (``a-pd``, ``b-pd``), and a PrfaaS cluster ``pf`` in a region of its own linked
to both (emulated WAN links, mutual TLS). Three tenants: ``pinned`` (region a), ``ab`` (a,
then b), ``free`` (any). Region a's decode instance is stopped (SIGSTOP: its heartbeats end):
``ab`` goes on in b with the offline engine's answer, ``free``'s long prompt goes from the
PrfaaS cluster to b over the link ``pf->b-pd``, ``pinned`` gets a 503 in the OpenAI format.
Resumed (SIGCONT), region a takes its tenants back. The audit log shows no request and no KV
transfer of a tenant outside its regions. The routing rules in detail are tested on fake
workers (``tests/gateway/test_regions.py``)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from prfaas.deploy.launcher import free_port
from prfaas.gateway.middleware import ROUTE_HEADER
from tests.reliability.conftest import (
    LONG,
    MODEL,
    SHORT,
    Serve,
    serve_config,
    start_serve,
    wait_for,
    worker_check,
)

HEARTBEAT_TIMEOUT_S = 3.0  # the gateway fleet's default
ALLOWED = {"pinned": {"a-pd"}, "ab": {"a-pd", "b-pd"}, "free": {"a-pd", "b-pd", "pf"}}


def regions_config(model: Path, audit_log: Path) -> dict[str, Any]:
    def inst(name: str, role: str) -> dict[str, Any]:
        return {"name": name, "role": role, "num_threads": 1}

    def pd(region: str) -> dict[str, Any]:
        instances = [inst(f"{region}-p", "prefill"), inst(f"{region}-d", "decode")]
        return {"name": f"{region}-pd", "kind": "pd", "region": region, "instances": instances}

    return serve_config(
        model,
        free_port(),
        clusters=[
            pd("a"),
            pd("b"),
            {"name": "pf", "kind": "prfaas", "instances": [inst("pf-0", "prefill")]},
        ],
        links=[{"src": "pf", "dst": dst, "rtt_ms": 2.0} for dst in ("a-pd", "b-pd")],
        tenants=[
            {"name": "pinned", "api_keys": ["key-pinned"], "regions": ["a"]},
            {"name": "ab", "api_keys": ["key-ab"], "regions": ["a", "b"]},
            {"name": "free", "api_keys": ["key-free"]},
        ],
        audit_log=str(audit_log),
    )


@pytest.fixture(scope="module")
def two_regions(drill_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    tmp = tmp_path_factory.mktemp("regions")
    s = start_serve(tmp, regions_config(drill_model, tmp / "audit.jsonl"))
    try:
        yield s
    finally:
        s.stop()


def ask(serve: Serve, tenant: str, prompt: str) -> tuple[str, str]:
    """(route, text) of a greedy completion for ``tenant``."""
    client = openai.OpenAI(
        base_url=serve.base_url + "/v1", api_key=f"key-{tenant}", max_retries=0, timeout=60
    )
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt=prompt, max_tokens=4, temperature=0
    )
    return raw.headers[ROUTE_HEADER], raw.parse().choices[0].text


def region_states(serve: Serve) -> dict[str, str]:
    return {r["name"]: r["state"] for r in serve.status()["regions"]}


def test_region_a_down_sends_its_tenants_on_within_their_regions_and_back(
    two_regions: Serve, reference: Callable[[str, int], str]
) -> None:
    serve = two_regions
    assert ask(serve, "ab", SHORT) == ("pd-p prefill=a-p decode=a-d", reference(SHORT, 4))
    assert ask(serve, "free", LONG) == ("prfaas prefill=pf-0 decode=a-d", reference(LONG, 4))

    victim = worker_check(serve.instance("a-d")["http_url"]).pid
    os.kill(victim, signal.SIGSTOP)
    try:
        wait_for(lambda: region_states(serve)["a"] == "down", HEARTBEAT_TIMEOUT_S + 20, "a down")
        assert ask(serve, "ab", SHORT) == ("pd-p prefill=b-p decode=b-d", reference(SHORT, 4))
        assert ask(serve, "ab", LONG)[0] == "pd-p prefill=b-p decode=b-d"  # pf: not ab's
        # KV from the PrfaaS cluster to region b, over its own link.
        assert ask(serve, "free", LONG) == ("prfaas prefill=pf-0 decode=b-d", reference(LONG, 4))
        with pytest.raises(openai.APIStatusError) as refused:
            ask(serve, "pinned", SHORT)
        assert refused.value.status_code == 503
        assert isinstance(refused.value.body, dict)
        assert refused.value.body["type"] == "service_unavailable"
    finally:
        os.kill(victim, signal.SIGCONT)
    wait_for(lambda: region_states(serve)["a"] == "serving", 60, "region a back")
    assert ask(serve, "pinned", SHORT) == ("pd-p prefill=a-p decode=a-d", reference(SHORT, 4))
    assert ask(serve, "ab", SHORT)[0] == "pd-p prefill=a-p decode=a-d"

    audit = serve.tmp / "audit.jsonl"
    time.sleep(1.0)  # a transfer's line is written when its prefill call returns
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    requests = [line for line in lines if line["event"] == "request"]
    transfers = [line for line in lines if line["event"] == "kv_transfer"]
    assert {(t["link"], t["outcome"], t["tenant"]) for t in transfers} == {
        ("pf->a-pd", "ok", "free"),
        ("pf->b-pd", "ok", "free"),
    }
    for line in requests:
        assert set(line["clusters"]) <= ALLOWED[line["tenant"]], line
    pinned = sorted(
        (line["outcome"], line["region"]) for line in requests if line["tenant"] == "pinned"
    )
    assert pinned == [("refused", None), ("routed", "a")]
