"""The launcher: processes started for a test or a benchmark never outlive it
(``die_with_parent``); spawned workers bind their own ports."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from fastapi import FastAPI
from tests.deploy_helper import topology
from tests.gateway.conftest import ServerThread

from prfaas.deploy.config import DeployConfig
from prfaas.deploy.launcher import Launcher
from prfaas.deploy.models import ModelFacts, served_versions
from prfaas.deploy.versions import worker_spawns
from prfaas.gateway.fleet import WorkerFleet
from prfaas.gateway.internal import add_internal_routes
from prfaas.router.kv_index import KvIndex

TOKEN = "test-cluster-token"


def test_a_child_started_with_die_with_parent_ends_when_its_parent_is_killed(
    tmp_path: Path,
) -> None:
    """Tests and benchmarks start `prfaas serve` with ``die_with_parent``: a SIGKILLed test
    run leaves no deployment behind (they hold GiBs each)."""
    pid_file = tmp_path / "child.pid"
    parent_code = (
        "import subprocess, sys, time\n"
        "from prfaas.deploy.launcher import die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],\n"
        "                         preexec_fn=die_with_parent, start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.1)
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and "Z" not in _state(child):
        assert time.monotonic() < deadline, "the child outlived its killed parent"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_spawned_workers_hold_their_ports_from_the_start(tiny_llama: Path, tmp_path: Path) -> None:
    """`prfaas serve` used to choose each worker's ports (``free_port``) and the worker bound
    them seconds later: a process that took one in between (parallel tests choose ports the
    same way) failed the deployment with "Address already in use". Here every port a spawn
    names is taken before its worker starts; the workers still come up, registered at the
    HTTP and KV ports they hold, and answer there."""
    cfg = DeployConfig.model_validate(topology(tiny_llama, 8000))
    versions = served_versions(cfg)
    clusters = [(v, c) for v, view in versions for c in view.clusters if c.name == "local"]
    facts = {versions[0][0].key: ModelFacts(str(tiny_llama), None, 256)}
    fleet = WorkerFleet({c.name: c.kind for _, c in clusters}, KvIndex())
    app = FastAPI()
    add_internal_routes(app, fleet, TOKEN)
    with ServerThread(app) as gateway, contextlib.ExitStack() as stack:
        spawns = worker_spawns(cfg, clusters, [], facts, 16, (gateway.base_url,), None, True)
        for spec in spawns:  # another process got there first
            for port in (spec.port, spec.kv_port):
                if port:
                    stack.enter_context(socket.create_server((spec.host, port)))
        launcher = Launcher(TOKEN, tmp_path / "logs")
        stack.callback(launcher.stop)
        for spec in spawns:
            launcher.spawn(spec)
        deadline = time.monotonic() + 120
        while len(fleet.workers) < len(spawns):
            dead = launcher.dead()
            assert not dead, [(tmp_path / "logs" / f"{n}.log").read_text()[-2000:] for n in dead]
            assert time.monotonic() < deadline, "the workers did not register"
            time.sleep(0.2)
        for record in fleet.workers.values():
            info = record.info
            assert httpx.get(info.http_url + "/health", timeout=10).status_code == 200
            assert info.kv_port > 0
            socket.create_connection((info.kv_host, info.kv_port), timeout=10).close()
