"""Spawn, restart and stop the worker processes of a deployment on this machine."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from prfaas.config import CLUSTER_TOKEN_ENV
from prfaas.libc import glibc

# Ports handed to processes that bind them later. Below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range, 32768-60999 by default), so no outgoing connection can take
# one between the choice and the bind, as happens to a port the kernel picked with bind(0).
PORT_RANGE = (20000, 32000)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, outside the ephemeral range (random: parallel callers rarely
    collide)."""
    for _ in range(200):
        port = random.randrange(*PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {PORT_RANGE} on {host}")


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``; port 0: a free one the kernel picks.
    Bind where the port is needed and serve from the socket: a port chosen here and bound
    later can be taken by another process in between."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host.strip("[]"), port), family=family, backlog=2048)


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for a child that must not outlive the process that starts it (a test,
    a benchmark), even when that one is SIGKILLed: the kernel sends the child SIGTERM
    (Linux's parent-death signal; elsewhere nothing). A `prfaas serve` that gets it stops
    its workers; workers leave on their own once their gateway is gone."""
    libc = glibc()
    if libc is None:
        return
    parent = os.getppid()
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


@dataclass(frozen=True)
class WorkerSpawn:
    name: str
    cluster: str
    role: str
    # 0: the worker binds a port the kernel picks and announces it when registering (the
    # gateway reads both ports from there); no port is chosen here and bound later, where
    # another process could take it in between.
    port: int
    kv_port: int
    gateway_urls: tuple[str, ...]
    model: str | None
    certs_dir: Path | None  # the folder of bundles `prfaas certs` wrote
    link_rates: dict[str, float]
    max_model_len: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    num_threads: int | None = None
    kv_cache_gb: float | None = None
    block_size: int | None = (
        None  # the deployment's (``DeployConfig.block_size``); None: the engine's
    )
    host: str = "127.0.0.1"
    exit_with_launcher: bool = True  # False: outlive it (several gateways: the others serve)
    insecure_control: bool = False  # plain HTTP to and from the gateway, even with certs
    engine: str = "reference"

    def argv(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "prfaas.cli",
            "worker",
            "--name",
            self.name,
            "--role",
            self.role,
            "--cluster",
            self.cluster,
            "--listen",
            f"{self.host}:{self.port}",
            "--kv-listen",
            f"{self.host}:{self.kv_port}",
            "--gateway",
            ",".join(self.gateway_urls),
        ]
        if self.exit_with_launcher:
            args += ["--parent-pid", str(os.getpid())]
        if self.model is not None:
            args += ["--model", self.model]
        if self.certs_dir is not None:
            args += ["--certs", str(self.certs_dir)]
        if self.insecure_control:
            args += ["--insecure"]
        if self.max_model_len is not None:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.device != "auto":
            args += ["--device", self.device]
        if self.dtype != "auto":
            args += ["--dtype", self.dtype]
        if self.num_threads is not None:
            args += ["--num-threads", str(self.num_threads)]
        if self.kv_cache_gb is not None:
            args += ["--kv-cache-gb", str(self.kv_cache_gb)]
        if self.block_size is not None:
            args += ["--block-size", str(self.block_size)]
        if self.engine != "reference":
            args += ["--engine", self.engine]
        for link, rate in self.link_rates.items():
            args += ["--link-rate", f"{link}={rate}"]
        return args


MALLOC_ARENAS = 2  # a spawned worker's glibc arenas, unless MALLOC_ARENA_MAX says otherwise


class Launcher:
    """Owns the spawned processes; ``stop`` ends each one's whole process group."""

    def __init__(self, cluster_token: str, log_dir: Path) -> None:
        self.cluster_token = cluster_token
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.specs: dict[str, WorkerSpawn] = {}

    def spawn(self, spec: WorkerSpawn) -> subprocess.Popen[bytes]:
        env = dict(os.environ, **{CLUSTER_TOKEN_ENV: self.cluster_token})
        # Two glibc heaps, not 8 per core: each arena a thread lands in keeps its freed
        # activations (engine.host_memory raises the trim threshold), so the worker's RSS grew
        # with every arena its KV-wait and I/O threads opened (docs/operations.md, the soak).
        env.setdefault("MALLOC_ARENA_MAX", str(MALLOC_ARENAS))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{spec.name}.log").open("ab")
        proc = subprocess.Popen(
            spec.argv(),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.procs[spec.name] = proc
        self.specs[spec.name] = spec
        return proc

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start worker ``name`` again with the same spawn (SIGKILL first if it still runs;
        ports 0 give it new ones). The new process registers with a new epoch and its ports:
        the gateway forgets the old one's kv-index entries."""
        spec = self.specs[name]  # KeyError: never spawned here
        old = self.procs.get(name)
        if old is not None:
            _wait_or_kill(old, 0.0)
        return self.spawn(spec)

    def dead(self) -> list[str]:
        return [name for name, p in self.procs.items() if p.poll() is not None]

    def stop(self, timeout_s: float = 10.0) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            _wait_or_kill(proc, timeout_s)
        self.procs.clear()


def _wait_or_kill(proc: subprocess.Popen[bytes], wait_s: float) -> None:
    """Wait up to ``wait_s`` for ``proc`` to exit, then SIGKILL its process group."""
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
