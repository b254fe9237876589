"""A whole deployment (`prfaas serve`) spawned as real processes on the tiny checkpoint, with
an audit log file, tight overload bounds (so a test can push past them in seconds) and three
tenants; shared by the security tests that need real workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from prfaas.gateway.launcher import free_port
from tests.serving.conftest import CLUSTER_TOKEN, deploy_yaml

MAX_INFLIGHT_PER_DECODE = 4
MAX_QUEUED = 4
QUEUE_TTL_S = 1.0


@dataclass
class Secured:
    base_url: str
    proc: subprocess.Popen[str]  # the gateway (`prfaas serve`) process
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
    config = tmp / "deploy.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = dict(
        os.environ,
        PRFAAS_CACHE_DIR=str(tmp / "cache"),
        PYTHONUNBUFFERED="1",
        PRFAAS_CLUSTER_TOKEN=CLUSTER_TOKEN,
    )
    argv = [sys.executable, "-m", "prfaas.cli", "serve", "--config", str(config)]
    proc = subprocess.Popen(
        [*argv, "--log-dir", str(tmp / "logs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 300
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "prfaas is serving" in line:
            break
    if not any("prfaas is serving" in line for line in lines):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        logs = "".join(p.read_text() for p in (tmp / "logs").glob("*.log"))
        pytest.fail("prfaas serve did not start:\n" + "".join(lines) + logs)
    try:
        yield Secured(f"http://127.0.0.1:{port}", proc, tmp / "audit.jsonl", tiny_llama)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
