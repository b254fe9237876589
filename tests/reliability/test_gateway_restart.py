"""The gateway dies while a decode worker holds blocks reserved for KV that will not come.

Workers here are started by hand (`prfaas worker`), not by the gateway (deploy.yaml
instances with ``spawn: false``), so they outlive it. The prefill worker is frozen
(SIGSTOP) so that the decode worker is caught holding its reservation when the gateway is
killed. Expected: the client's request ends with a clear error at once; the decode worker
releases the reservation by its deadline; the prefill command the frozen worker still
holds, once it thaws, finds the KV refused (abandoned) rather than leaked; a new gateway on
the same port gets both workers back (they re-register) and serves correct output; every
pool is clean.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from prfaas.deploy.launcher import free_port
from tests.deploy_helper import session_certs
from tests.reliability.conftest import (
    KV_DEADLINE_S,
    MARGIN_S,
    MODEL,
    SHORT,
    Serve,
    assert_clean,
    env_for,
    long_prompt,
    serve_config,
    start_serve,
    stop_process,
    wait_for,
    worker_check,
)

MAX_TOKENS = 8
ROLES = {"pd-p-0": "prefill", "pd-d-0": "decode"}


def start_worker(
    model: Path, tmp: Path, name: str, port: int, gateway: str
) -> subprocess.Popen[bytes]:
    with (tmp / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "prfaas.cli", "worker", "--name", name, "--role", ROLES[name]]
            + ["--cluster", "local", "--listen", f"127.0.0.1:{port}", "--gateway", gateway]
            + ["--model", str(model), "--max-model-len", "512", "--kv-cache-gb", "0.05"]
            + ["--certs", str(session_certs(["local"]))],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env_for(tmp),
            start_new_session=True,
        )


@dataclass
class Cluster:
    tmp: Path
    config: dict[str, Any]  # deploy.yaml of every gateway started on it
    urls: dict[str, str]  # worker name -> its HTTP endpoint
    procs: dict[str, subprocess.Popen[bytes]]


@pytest.fixture(scope="module")
def cluster(drill_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("gateway-restart")
    port = free_port()
    instances = [{"name": n, "role": r, "spawn": False} for n, r in ROLES.items()]
    config = serve_config(
        drill_model, port, clusters=[{"name": "local", "kind": "pd", "instances": instances}]
    )
    config["links"] = []
    control_port = free_port()  # the gateway's mutual-TLS listener, where workers register
    config["control_plane"] = {"port": control_port}
    config["certs_dir"] = str(session_certs(["local"]))
    ports = {name: free_port() for name in ROLES}
    gateway = f"https://127.0.0.1:{control_port}"
    procs = {n: start_worker(drill_model, tmp, n, ports[n], gateway) for n in ROLES}
    try:
        yield Cluster(tmp, config, {n: f"https://127.0.0.1:{p}" for n, p in ports.items()}, procs)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
            stop_process(proc, signal.SIGTERM)


def complete(serve: Serve, prompt: str) -> str:
    out = serve.client().completions.create(
        model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0
    )
    return out.choices[0].text


def test_gateway_killed_while_decode_holds_a_reservation(
    cluster: Cluster, reference: Callable[[str, int], str]
) -> None:
    first = start_serve(cluster.tmp / "gw1", cluster.config)
    try:
        first.wait_healthy(list(ROLES))
        for prompt in (SHORT, long_prompt(10)):
            assert complete(first, prompt) == reference(prompt, MAX_TOKENS)
        baseline = {n: c.asyncio_tasks for n, c in assert_clean(cluster.urls).items()}

        prefill = cluster.procs["pd-p-0"]
        os.killpg(prefill.pid, signal.SIGSTOP)  # its prefill command will wait
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(complete, first, long_prompt(11))
            wait_for(
                lambda: worker_check(cluster.urls["pd-d-0"]).kv_awaited == 1,
                MARGIN_S,
                "the decode worker to reserve blocks for the KV",
            )
            killed_s = time.monotonic()
            os.killpg(first.proc.pid, signal.SIGKILL)
            with pytest.raises(openai.APIConnectionError):  # a clear error, at once
                answer.result()
        assert time.monotonic() - killed_s < MARGIN_S
    finally:
        first.stop()
    # The decode worker gives the reservation back by its KV deadline.
    assert_clean({"pd-d-0": cluster.urls["pd-d-0"]}, baseline, KV_DEADLINE_S + MARGIN_S)
    # Thawed, the prefill worker runs the orphaned command; its KV is refused, not held.
    os.killpg(prefill.pid, signal.SIGCONT)
    assert_clean(cluster.urls, baseline)

    second = start_serve(cluster.tmp / "gw2", cluster.config)  # the same port
    try:
        second.wait_healthy(list(ROLES))
        for prompt in (SHORT, long_prompt(12)):
            assert complete(second, prompt) == reference(prompt, MAX_TOKENS)
        assert_clean(cluster.urls, baseline)
    finally:
        second.stop()
