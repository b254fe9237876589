"""A whole deployment (`prfaas serve`: gateway, three workers, an emulated WAN link with
mutual TLS) spawned as real processes on a tiny checkpoint, shared by the serving tests
(through ``tests/deploy_helper.py``, the one way the multi-process tests deploy)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.deploy_helper import deploy, topology

from prfaas.deploy.launcher import free_port

THRESHOLD_TOKENS = 32
CLUSTER_TOKEN = "test-cluster-token"


@dataclass
class Deployed:
    base_url: str
    proc: subprocess.Popen[bytes]
    model: Path
    lines: list[str] = field(default_factory=list)  # what `prfaas serve` printed at start


def deploy_yaml(model: Path, port: int) -> dict[str, Any]:
    """The standard topology with two tenants (bob may use the local cluster only)."""
    return topology(
        model,
        port,
        threshold_tokens=THRESHOLD_TOKENS,
        link={"rtt_ms": 4.0, "connections": 2},
        tenants=[
            {"name": "alice", "api_keys": ["key-alice"]},
            {"name": "bob", "api_keys": ["key-bob"], "clusters": ["local"]},
        ],
        kv_deadline_s=60.0,
    )


@contextlib.contextmanager
def serving(
    config: dict[str, Any], tmp: Path, model: Path, until: str = "prfaas is serving"
) -> Iterator[Deployed]:
    """`prfaas serve --config` with ``config`` until the block exits; start-up ends with the
    printed line containing ``until``."""
    with deploy(config, tmp, CLUSTER_TOKEN, until=until) as running:
        yield Deployed(running.base_url, running.proc, model, running.lines)


@pytest.fixture(scope="package")
def deployed(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    tmp = tmp_path_factory.mktemp("serve")
    with serving(deploy_yaml(tiny_llama, free_port()), tmp, tiny_llama) as d:
        yield d
