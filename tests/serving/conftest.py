"""A whole deployment (`prfaas serve`: gateway, three workers, an emulated WAN link with
mutual TLS) spawned as real processes on a tiny checkpoint, shared by the serving tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from prfaas.gateway.launcher import free_port

THRESHOLD_TOKENS = 32
CLUSTER_TOKEN = "test-cluster-token"


@dataclass
class Deployed:
    base_url: str
    proc: subprocess.Popen[str]
    model: Path
    lines: list[str] = field(default_factory=list)  # what `prfaas serve` printed at start


def deploy_yaml(model: Path, port: int) -> dict[str, object]:
    return {
        "model": str(model),
        "served_model_name": "tiny",
        "port": port,
        "clusters": [
            {
                "name": "local",
                "kind": "pd",
                "instances": [
                    {"name": "pd-p-0", "role": "prefill"},
                    {"name": "pd-d-0", "role": "decode"},
                ],
            },
            {
                "name": "remote",
                "kind": "prfaas",
                "instances": [{"name": "prfaas-0", "role": "prefill"}],
            },
        ],
        "links": [
            {
                "src": "remote",
                "dst": "local",
                "rate_gbps": 1.0,
                "rtt_ms": 4.0,
                "tls": True,
                "connections": 2,
            }
        ],
        "tenants": [
            {"name": "alice", "api_keys": ["key-alice"]},
            {"name": "bob", "api_keys": ["key-bob"], "clusters": ["local"]},
        ],
        "policy": {"name": "prfaas", "threshold_tokens": THRESHOLD_TOKENS},
        "kv_deadline_s": 60.0,
    }


@contextlib.contextmanager
def serving(
    config: dict[str, object], tmp: Path, model: Path, until: str = "prfaas is serving"
) -> Iterator[Deployed]:
    """`prfaas serve --config` with ``config`` as real processes, until the block exits;
    start-up ends with the printed line containing ``until``."""
    path = tmp / "deploy.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(
        os.environ,
        PRFAAS_CACHE_DIR=str(tmp / "cache"),
        PYTHONUNBUFFERED="1",
        PRFAAS_CLUSTER_TOKEN=CLUSTER_TOKEN,
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prfaas.cli",
            "serve",
            "--config",
            str(path),
            "--log-dir",
            str(tmp / "logs"),
        ],
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
        if until in line:
            break
    if not any(until in line for line in lines):
        proc.kill()
        logs = "".join(p.read_text() for p in (tmp / "logs").glob("*.log"))
        pytest.fail("prfaas serve did not start:\n" + "".join(lines) + logs)
    try:
        yield Deployed(f"http://127.0.0.1:{config['port']}", proc, model, lines)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="package")
def deployed(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    tmp = tmp_path_factory.mktemp("serve")
    with serving(deploy_yaml(tiny_llama, free_port()), tmp, tiny_llama) as d:
        yield d
