"""Start and stop one `prfaas serve` for a benchmark: its config written beside its log, its
stdout read until the ready banner, the whole process group stopped at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from prfaas.deploy.launcher import die_with_parent


def start_serve(
    name: str, cfg: dict[str, Any], log_dir: Path, timeout_s: float, *extra_args: str
) -> subprocess.Popen[bytes]:
    """`prfaas serve --config <log_dir>/<name>.yaml`, returned once it prints that it serves
    (the banner comes only when every configured path can serve)."""
    path = log_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "prfaas.cli", "serve", "--config", str(path), *extra_args],
        stdout=subprocess.PIPE,
        stderr=(log_dir / f"{name}.log").open("wb"),
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True,
        preexec_fn=die_with_parent,  # never outlives this process
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    for line in iter(proc.stdout.readline, b""):  # ends when serve exits
        if b"prfaas is serving" in line:
            return proc
        if time.monotonic() > deadline:
            break
    stop_serve(proc)
    raise RuntimeError(f"prfaas serve ({name}) did not start; see {log_dir / f'{name}.log'}")


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the group (serve stops its workers), SIGKILL after a minute."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
