"""Processes started for a test or a benchmark never outlive it (``die_with_parent``)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


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
