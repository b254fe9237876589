"""A real redis-server for tests: started on a free port in a temp dir, nothing persisted.

Uses ``redis-server`` on PATH; if it is missing and we are root (CI containers), installs it
with apt-get first; otherwise the tests that need it skip, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from prfaas.deploy.launcher import free_port

APT_TIMEOUT_S = 300


def _redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(
                "apt-get update -qq && apt-get install -y -qq redis-server",
                shell=True,
                check=True,
                env=env,
                capture_output=True,
                timeout=APT_TIMEOUT_S,
            )
        except (subprocess.SubprocessError, OSError):
            return None
        found = shutil.which("redis-server")
    return found


@dataclass
class RedisServer:
    url: str
    proc: subprocess.Popen[bytes]

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_redis(tmp: Path, port: int | None = None) -> RedisServer:
    binary = _redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server) and cannot be")
    port = port or free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp)]
        + ["--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=(tmp / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = RedisServer(f"redis://127.0.0.1:{port}/0", proc)
    deadline = time.monotonic() + 20
    while True:
        try:
            server.client().ping()
            return server
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(
                    "redis-server did not start: " + (tmp / "redis.log").read_text()
                ) from None
            time.sleep(0.05)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.kill()
