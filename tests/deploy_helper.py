"""The one way the multi-process tests deploy: ``topology`` writes the deploy.yaml dict of the
standard test deployment, ``deploy`` runs `prfaas serve` on it as real processes (gateway plus
the workers it spawns) until the block exits.

The standard topology: a PD cluster ``local`` (``pd-p-0`` prefill, ``pd-d-0`` decode), a
PrfaaS cluster ``remote`` (``prfaas-0``), the link ``remote->local`` (emulated, mutual TLS
unless overridden), t pinned at ``threshold_tokens``.

Certificates: unless a config sets ``certs_dir`` or an insecure control plane, ``launch`` gives
it the session's test CA (``TEST_CERTS``, a bundle per cluster and the gateways'), so that a
test can call a worker's control port as a gateway does (``gateway_tls``)."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from prfaas.deploy.launcher import die_with_parent

START_S = 300.0
# Every test deployment's KV pool per instance, unless its config sets one: a worker zeroes its
# whole pool at start (the default is 1 GiB), and a test needs a few thousand tokens of KV
# (SmolLM2: 46 KiB a token, 5.7k tokens here). Two test processes run deployments side by
# side; at 1 GiB a worker the suite's peak was ~20 GiB of this 23 GiB machine (one run was
# OOM-killed), and zeroing the pools cost ~0.5 s of CPU per worker.
TEST_KV_GB = 0.25
TEST_CERTS = Path(tempfile.mkdtemp(prefix="prfaas-test-certs-"))


def session_certs(clusters: list[str]) -> Path:
    """The session's CA folder, with a bundle for each of ``clusters`` (added as needed)."""
    from prfaas.transfer.tls import write_certs

    missing = [c for c in clusters if not (TEST_CERTS / c).is_dir()]
    if missing or not (TEST_CERTS / "gateway").is_dir():
        write_certs(TEST_CERTS, missing)
    return TEST_CERTS


@functools.cache
def gateway_tls() -> ssl.SSLContext:
    """A client context holding the gateways' certificate of the session's test CA."""
    from prfaas.control_plane import GATEWAY, ControlTls

    return ControlTls.from_dir(session_certs([]), GATEWAY).client_context()


def pd_cluster(prefill: int, decode: int, **keys: Any) -> dict[str, Any]:
    """The PD cluster ``local``: instances ``pd-p-<i>`` and ``pd-d-<i>``, each with ``keys``."""
    instances = [{"name": f"pd-p-{i}", "role": "prefill", **keys} for i in range(prefill)]
    instances += [{"name": f"pd-d-{i}", "role": "decode", **keys} for i in range(decode)]
    return {"name": "local", "kind": "pd", "instances": instances}


def prfaas_cluster(prefill: int, **keys: Any) -> dict[str, Any]:
    """The PrfaaS cluster ``remote``: prefill instances ``prfaas-<i>``, each with ``keys``."""
    instances = [{"name": f"prfaas-{i}", "role": "prefill", **keys} for i in range(prefill)]
    return {"name": "remote", "kind": "prfaas", "instances": instances}


def topology(
    model: Path,
    port: int,
    *,
    served_model_name: str = "tiny",
    threshold_tokens: int | None = 32,
    spawn: bool = True,
    link: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The deploy.yaml dict; ``link`` updates the link's keys, ``overrides`` top-level keys
    (``tenants``, ``kv_deadline_s``, ``overload``, ``policy``, …)."""

    return {
        "model": str(model),
        "served_model_name": served_model_name,
        "port": port,
        "clusters": [pd_cluster(1, 1, spawn=spawn), prfaas_cluster(1, spawn=spawn)],
        "links": [{"src": "remote", "dst": "local", "rate_gbps": 1.0, "tls": True, **(link or {})}],
        "policy": {"name": "prfaas", "threshold_tokens": threshold_tokens},
        **overrides,
    }


@dataclass
class Running:
    """A running `prfaas serve`: its URL, process (a session leader: its group holds the
    workers it spawned), folder, and what it printed up to the start-up line."""

    base_url: str
    proc: subprocess.Popen[bytes]
    tmp: Path
    lines: list[str]

    def stop(self, sig: int = signal.SIGINT) -> None:
        stop_process(self.proc, sig)


def shared_cache(tmp: Path) -> str:
    """The ``PRFAAS_CACHE_DIR`` of a deployment a test starts in ``tmp``: beside that folder,
    so shared by the deployments of a test process. In a fresh cache each worker would hash
    its model's weights again (0.75 s for SmolLM2) and build the decode kernel again; both
    are written atomically, so workers filling it at once are safe."""
    return str(tmp.parent / "prfaas-cache")


def sized_for_tests(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``TEST_KV_GB`` for every instance that sets no KV pool of its own."""
    clusters = [
        {**c, "instances": [{"kv_cache_gb": TEST_KV_GB, **i} for i in c["instances"]]}
        for c in config["clusters"]
    ]
    return {**config, "clusters": clusters}


def launch(
    config: dict[str, Any],
    tmp: Path,
    cluster_token: str,
    *,
    name: str = "serve",
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
) -> tuple[subprocess.Popen[bytes], Path]:
    """Write ``config`` and start `prfaas serve` on it (extra CLI ``args``); return at once
    with the process and the file its output goes to."""
    tmp.mkdir(parents=True, exist_ok=True)
    insecure = config.get("control_plane", {}).get("insecure", False)
    if "certs_dir" not in config and not insecure:
        config = {
            **config,
            "certs_dir": str(session_certs([c["name"] for c in config["clusters"]])),
        }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sized_for_tests(config)))
    out_path = tmp / f"{name}.out"
    environment = dict(
        os.environ,
        PRFAAS_CACHE_DIR=shared_cache(tmp),
        PYTHONUNBUFFERED="1",
        PRFAAS_CLUSTER_TOKEN=cluster_token,
        **(env or {}),
    )
    argv = [sys.executable, "-m", "prfaas.cli", "serve", "--config", str(path), *(args or [])]
    with out_path.open("wb") as out:  # a file, not a pipe: nobody has to keep reading it
        proc = subprocess.Popen(
            [*argv, "--log-dir", str(tmp / f"{name}-logs")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
            preexec_fn=die_with_parent,  # never outlives this process
        )
    return proc, out_path


def start(
    config: dict[str, Any],
    tmp: Path,
    cluster_token: str,
    *,
    name: str = "serve",
    until: str = "prfaas is serving",
    env: dict[str, str] | None = None,
    start_s: float = START_S,
) -> Running:
    """``launch``; return once it printed ``until`` (fails with its output and the workers'
    logs if it does not within ``start_s``)."""
    proc, out_path = launch(config, tmp, cluster_token, name=name, env=env)
    deadline = time.monotonic() + start_s
    while True:
        lines = out_path.read_text(errors="replace").splitlines(keepends=True)
        if any(until in line for line in lines):
            upto = next(i for i, line in enumerate(lines) if until in line)
            return Running(f"http://127.0.0.1:{config['port']}", proc, tmp, lines[: upto + 1])
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc, signal.SIGKILL)
            logs = "".join(p.read_text() for p in (tmp / f"{name}-logs").glob("*.log"))
            raise AssertionError(f"prfaas serve did not start:\n{''.join(lines)}{logs}")
        time.sleep(0.2)


@contextlib.contextmanager
def deploy(
    config: dict[str, Any],
    tmp: Path,
    cluster_token: str,
    *,
    until: str = "prfaas is serving",
    env: dict[str, str] | None = None,
    start_s: float = START_S,
) -> Iterator[Running]:
    """``start``, and stop the whole deployment (SIGINT, then SIGKILL) when the block exits."""
    running = start(config, tmp, cluster_token, until=until, env=env, start_s=start_s)
    try:
        yield running
    finally:
        running.stop()


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGINT) -> None:
    """Signal the process group (the workers too, even if the gateway is gone); SIGKILL it
    if the gateway is not gone within 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
