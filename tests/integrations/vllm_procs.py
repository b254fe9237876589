"""Start ``vllm_instance.py`` engines as processes and collect what they wrote (the hand-off
tests' shared plumbing), and the one skip of the modules that need vLLM."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from prfaas.deploy.launcher import die_with_parent

SCRIPT = Path(__file__).with_name("vllm_instance.py")
# One unbound OpenMP thread per engine: several engines (and the reference engine, or the
# tier's deployment) share 2 cores, and vLLM's default binds every engine to all of them.
THREADS = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}


HAS_VLLM = importlib.util.find_spec("vllm") is not None
VLLM_MISSING = (
    "vLLM is not installed in this environment: its tests run in the .venv-vllm environment "
    "that `make setup-vllm` creates (`make test` runs them there, `make test-vllm` runs "
    "them alone)"
)


def require_vllm() -> None:
    """Skip the calling test module where vLLM is not installed (call it at module level,
    before anything imports vLLM)."""
    if not HAS_VLLM:
        pytest.skip(VLLM_MISSING, allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Instance:
    name: str
    spec: dict[str, Any]
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """End the script and vLLM's engine processes, which outlive a kill of the script
        alone (its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def start(name: str, spec: dict[str, Any], tmp: Path) -> Instance:
    spec = {**spec, "ready": str(tmp / f"{name}.ready"), "go": str(tmp / "go")}
    spec["out"] = str(tmp / f"{name}.out.json")
    spec_path = tmp / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    log = tmp / f"{name}.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, str(SCRIPT), str(spec_path)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **THREADS},
            start_new_session=True,  # its process group: ``kill`` ends vLLM's children too
            preexec_fn=die_with_parent,  # never outlives this process
        )
    return Instance(name, spec, proc, log)


def wait_for(instances: list[Instance], ready: bool, timeout_s: float) -> None:
    end_s = time.monotonic() + timeout_s
    for inst in instances:
        while not (Path(inst.spec["ready"]).exists() if ready else inst.proc.poll() is not None):
            if inst.proc.poll() is not None and ready:
                raise AssertionError(f"{inst.name} exited early:\n{inst.tail()}")
            if time.monotonic() > end_s:
                raise AssertionError(f"{inst.name} not done within {timeout_s}s:\n{inst.tail()}")
            time.sleep(0.2)
        if not ready and inst.proc.returncode != 0:
            raise AssertionError(f"{inst.name} failed:\n{inst.tail()}")


def read_events(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    return {e["transfer_id"]: e for e in map(json.loads, lines)}
