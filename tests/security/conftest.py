"""A whole deployment (`prfaas serve`) spawned as real processes on the tiny checkpoint, with
an audit log file, tight overload bounds (so a test can push past them in seconds) and three
tenants; shared by the security tests that need real workers."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from prfaas.deploy.launcher import free_port
from tests.serving.conftest import deploy_yaml, serving

MAX_INFLIGHT_PER_DECODE = 4
MAX_QUEUED = 4
QUEUE_TTL_S = 1.0


@dataclass
class Secured:
    base_url: str
    proc: subprocess.Popen[bytes]  # the gateway (`prfaas serve`) process
    audit_log: Path
    model: Path


@pytest.fixture(scope="package")
def secured(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("secured")
    port = free_port()
    cfg = deploy_yaml(tiny_llama, port)
    cfg["audit_log"] = str(tmp / "audit.jsonl")
    cfg["overload"] = {
        "max_inflight_per_decode": MAX_INFLIGHT_PER_DECODE,
        "max_queued": MAX_QUEUED,
        "queue_ttl_s": QUEUE_TTL_S,
        "retry_after_s": 1.0,
    }
    tenants = cfg["tenants"]
    assert isinstance(tenants, list)
    tenants.append({"name": "carol", "api_keys": ["key-carol"]})
    with serving(cfg, tmp, tiny_llama) as deployed:
        yield Secured(deployed.base_url, deployed.proc, tmp / "audit.jsonl", tiny_llama)
