"""The canary through the real gateway (dispatch, admin route, /status, metrics, router)
against fake workers (``tests/fakes``): the plumbing, with no model. A decode worker that
reports recomputing prompts whose KV it was sent is flagged, quarantined and routed around,
and returns once it behaves. Model-level consistency is tested on real workers
(``tests/canary/test_canary_live.py``)."""

from __future__ import annotations

from typing import Any

import httpx

from prfaas.gateway.middleware import ROUTE_HEADER
from prfaas.messages import TOKEN_HEADER
from tests.fakes.cluster import FakeCluster, fake_cluster
from tests.fakes.worker import FakeWorker
from tests.gateway.test_dispatch import LONG, complete

CANARY = {"enabled": False, "max_tokens": 4, "quarantine": True}


def run_round(c: FakeCluster) -> dict[str, dict[str, Any]]:
    r = httpx.post(c.url + "/admin/canary", headers={TOKEN_HEADER: c.token}, timeout=30.0)
    assert r.status_code == 200, r.text
    return {p["path"]: p for p in r.json()["paths"]}


def test_fake_disaggregation_is_flagged_quarantined_and_routed_around() -> None:
    workers = [
        FakeWorker("pd-p-0", "prefill", "local"),
        FakeWorker("pd-d-0", "decode", "local"),
        FakeWorker("pd-d-1", "decode", "local"),
        FakeWorker("prfaas-0", "prefill", "remote"),
    ]
    with fake_cluster(workers, canary=CANARY) as c:
        assert httpx.post(c.url + "/admin/canary", timeout=10.0).status_code == 401
        paths = run_round(c)
        assert len(paths) == 6 and all(p["ok"] for p in paths.values()), paths

        c.workers["pd-d-0"].behaviour.ignores_kv = True
        paths = run_round(c)
        bad = {name for name, p in paths.items() if not p["ok"]}
        assert bad == {
            "pd-p-0 -[local, raw]-> pd-d-0",
            "prfaas-0 -[remote->local, raw]-> pd-d-0",
        }, paths
        for name in bad:
            assert paths[name]["fake_disaggregation"] and paths[name]["quarantined"]
        assert paths["pd-d-0 (reference)"]["ok"]  # computing is what a reference path does

        status = httpx.get(c.url + "/status", timeout=10.0).json()
        assert sum(p["quarantined"] for p in status["canary"]["paths"]) == 2
        metrics = httpx.get(c.url + "/metrics", timeout=10.0).text
        assert 'prfaas_canary_quarantined{codec="raw",decode="pd-d-0"' in metrics
        # pd-d-0 is idle and first by name, yet every path into it is quarantined.
        r = complete(c.url, LONG)
        assert r.status_code == 200 and r.headers[ROUTE_HEADER].endswith("decode=pd-d-1")

        c.workers["pd-d-0"].behaviour.ignores_kv = False
        paths = run_round(c)
        assert all(p["ok"] and not p["quarantined"] for p in paths.values()), paths
        r = complete(c.url, LONG)
        assert r.headers[ROUTE_HEADER].endswith("decode=pd-d-0")
