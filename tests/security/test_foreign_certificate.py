"""Real processes: `prfaas serve` (its gateway waiting for workers started by hand) and real
`prfaas worker` processes on the tiny checkpoint. A worker holding another cluster's
certificate is refused into the cluster it claims (both sides log it) and never routed to;
the same certificate registers into its own cluster."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from prfaas.deploy.launcher import free_port
from prfaas.messages import TOKEN_HEADER
from tests.deploy_helper import launch, session_certs, shared_cache, stop_process, topology

TOKEN = "foreign-certificate-token"


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def start_worker(
    model: Path, tmp: Path, name: str, cluster: str, bundle: Path, gateway: str
) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prfaas.cli", "worker", "--name", name, "--role", "prefill"]
            + ["--cluster", cluster, "--listen", f"127.0.0.1:{free_port()}"]
            + ["--gateway", gateway, "--certs", str(bundle), "--model", str(model)]
            + ["--max-model-len", "256", "--kv-cache-gb", "0.05"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PRFAAS_CLUSTER_TOKEN=TOKEN, PRFAAS_CACHE_DIR=shared_cache(tmp)),
            start_new_session=True,
        )
    return proc, log


def test_a_worker_with_another_clusters_certificate_is_refused(
    tiny_llama: Path, tmp_path: Path
) -> None:
    certs = session_certs(["local", "remote"])
    # A machine of cluster remote claims to be in local: its bundle's files are named for
    # local, but the certificate inside names remote (what a stolen bundle would look like).
    forged = tmp_path / "forged"
    forged.mkdir()
    shutil.copy(certs / "remote" / "ca.pem", forged / "ca.pem")
    shutil.copy(certs / "remote" / "remote.pem", forged / "local.pem")
    shutil.copy(certs / "remote" / "remote.key", forged / "local.key")
    port, control_port = free_port(), free_port()
    config = topology(tiny_llama, port, spawn=False, control_plane={"port": control_port})
    gateway_url, control_url = f"http://127.0.0.1:{port}", f"https://127.0.0.1:{control_port}"
    serve, serve_out = launch(config, tmp_path, TOKEN)
    procs = [serve]
    try:

        def instances() -> dict[str, dict[str, object]]:
            try:
                r = httpx.get(gateway_url + "/status", headers={TOKEN_HEADER: TOKEN}, timeout=5)
                return {i["name"]: i for i in r.json()["instances"]}
            except (httpx.HTTPError, ValueError):
                return {}

        # Both machines start at once (each loads the model for seconds): the impostor, and
        # the same certificate in the cluster it names.
        impostor, impostor_log = start_worker(
            tiny_llama, tmp_path, "pd-p-0", "local", forged, control_url
        )
        procs.append(impostor)
        honest, _ = start_worker(
            tiny_llama, tmp_path, "prfaas-0", "remote", certs / "remote", control_url
        )
        procs.append(honest)
        wait_for(lambda: "refused us" in impostor_log.read_text(), 120, "the refusal")
        assert "certificate of 'remote' cannot register into 'local'" in impostor_log.read_text()
        assert "refused worker pd-p-0 into cluster 'local'" in serve_out.read_text()
        assert "pd-p-0" not in instances()
        wait_for(lambda: bool(instances().get("prfaas-0", {}).get("healthy")), 120, "prfaas-0")
        assert instances()["prfaas-0"]["cluster"] == "remote"
        assert "pd-p-0" not in instances()
    finally:
        for proc in reversed(procs):
            stop_process(proc, signal.SIGTERM if proc is not serve else signal.SIGINT)
