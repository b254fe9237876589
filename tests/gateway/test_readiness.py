"""``/health`` of the real cluster gateway (``deploy.serve.build_deployment``) over fake
workers (no model: the subject is when the gateway says it can serve, not the engine):
503 with the missing path until every configured (cluster, role) has a healthy instance,
then 200, and 503 again once a path loses its last one. The whole-deployment version, from
the first second of `prfaas serve`, is tests/serving/test_readiness.py."""

from __future__ import annotations

import time

import httpx

from prfaas.deploy.config import default_config
from prfaas.deploy.readiness import missing_paths
from prfaas.messages import Role
from prfaas.router.types import InstanceView
from tests.fakes.cluster import fake_cluster
from tests.gateway.test_dispatch import SHORT, complete, fleet


def health(url: str) -> httpx.Response:
    return httpx.get(url + "/health", timeout=5.0)


def test_health_is_503_naming_the_missing_path_until_it_registers() -> None:
    workers = fleet()
    late = workers.pop()  # prfaas-0: the remote cluster's only prefill instance
    configured = [
        {"name": "local", "kind": "pd", "instances": [
            {"name": w.name, "role": w.role, "spawn": False} for w in workers
        ]},
        {"name": "remote", "kind": "prfaas", "instances": [
            {"name": late.name, "role": late.role, "spawn": False}
        ]},
    ]  # fmt: skip
    with fake_cluster(workers, clusters=configured) as c:
        r = health(c.url)
        assert r.status_code == 503
        assert r.json()["status"] == "unavailable"
        assert "remote/prefill" in r.json()["reason"]
        assert c.register(late) == 200
        r = health(c.url)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert complete(c.url, SHORT).status_code == 200


def test_health_turns_503_when_a_path_loses_its_last_healthy_instance() -> None:
    with fake_cluster(fleet()) as c:
        assert health(c.url).status_code == 200
        c.stop("pd-d-0")  # its heartbeats stop; after the timeout it is unhealthy
        end = time.monotonic() + c.deployment.fleet.heartbeat_timeout_s + 5.0
        while (r := health(c.url)).status_code == 200:
            assert time.monotonic() < end, "health stayed 200 without a decode instance"
            time.sleep(0.1)
        assert r.status_code == 503 and "local/decode" in r.json()["reason"]
        assert complete(c.url, SHORT).status_code == 503  # what health predicted


def test_missing_paths_names_each_configured_role_of_each_cluster() -> None:
    cfg = default_config()  # local: PD-P and PD-D; remote: one PrfaaS prefill

    def view(name: str, cluster: str, role: Role, healthy: bool = True) -> InstanceView:
        return InstanceView(name, cluster, role, healthy=healthy)

    assert missing_paths(cfg, []) == ["local/prefill", "local/decode", "remote/prefill"]
    present = [view("a", "local", "prefill"), view("b", "local", "decode")]
    assert missing_paths(cfg, present) == ["remote/prefill"]
    draining = view("c", "remote", "prefill", healthy=False)
    assert missing_paths(cfg, [*present, draining]) == ["remote/prefill"]
    assert missing_paths(cfg, [*present, view("c", "remote", "prefill")]) == []
