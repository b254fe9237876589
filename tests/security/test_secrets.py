"""Secrets at the deployment's edge: `--api-key-file` (parsed strictly, errors name the line
and never echo a key, a world-readable file is warned about), `prfaas serve` refusing a bad
file before it loads anything, and `/status` asking for the admin key (the cluster token)
when the gateway binds a non-loopback address. The banner's silence about keys is checked on
a real deployment in tests/serving/test_readiness.py."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from prfaas.deploy.api_keys import ApiKeyFileError, load_api_key_file
from prfaas.deploy.config import binds_loopback
from prfaas.messages import TOKEN_HEADER
from tests.fakes.cluster import fake_cluster
from tests.gateway.test_dispatch import fleet


def key_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "keys"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_key_file_maps_keys_to_tenants_skipping_comments_and_blank_lines(
    tmp_path: Path,
) -> None:
    text = "# production keys\n\nsk-alice-1=alice\n  sk-bob==bob  \n# sk-old=gone\n"
    assert load_api_key_file(key_file(tmp_path, text)) == {"sk-alice-1": "alice", "sk-bob=": "bob"}


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("sk-a=alice\nsk-b\n", 2, "expected KEY=TENANT"),
        ("# c\n=alice\n", 2, "expected KEY=TENANT"),
        ("sk-a=\n", 1, "the tenant must be"),
        ("sk a=alice\n", 1, "the key must be"),
        ("sk-a=al ice\n", 1, "the tenant must be"),
        ("sk-a=alice\nsk-a=bob\n", 2, "this key was given to tenant 'alice'"),
        (f"{'k' * 600}=alice\n", 1, "the key must be"),
    ],
)
def test_bad_key_file_lines_are_refused_naming_the_line(
    tmp_path: Path, text: str, line: int, says: str
) -> None:
    path = key_file(tmp_path, text)
    with pytest.raises(ApiKeyFileError, match=re.escape(f"{path}:{line}: {says}")) as err:
        load_api_key_file(path)
    assert "sk-a" not in str(err.value) and "sk-b" not in str(err.value)  # no key echoed


def test_key_file_without_keys_too_big_or_missing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ApiKeyFileError, match="no KEY=TENANT line"):
        load_api_key_file(key_file(tmp_path, "# nothing yet\n"))
    with pytest.raises(ApiKeyFileError, match="at most 1 MiB"):
        load_api_key_file(key_file(tmp_path, "k=t\n" * 300_000))
    with pytest.raises(ApiKeyFileError, match="cannot read"):
        load_api_key_file(tmp_path / "absent")


def test_world_readable_key_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="prfaas.deploy.api_keys"):
        load_api_key_file(key_file(tmp_path, "sk-a=alice\n", mode=0o600))
        assert not caplog.records
        load_api_key_file(key_file(tmp_path, "sk-a=alice\n", mode=0o644))
    assert "readable by every user" in caplog.text and "sk-a" not in caplog.text


def test_serve_refuses_a_bad_key_file_before_starting_anything(tmp_path: Path) -> None:
    path = key_file(tmp_path, "sk-a=alice\nnot a key line\n")
    argv = [sys.executable, "-m", "prfaas.cli", "serve", "--api-key-file", str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"{path}:2: expected KEY=TENANT" in done.stderr
    assert "sk-a" not in done.stderr + done.stdout


def test_loopback_addresses_are_told_apart() -> None:
    assert binds_loopback("127.0.0.1") and binds_loopback("localhost")
    assert not binds_loopback("0.0.0.0")


def test_status_needs_the_admin_key_on_a_non_loopback_address() -> None:
    with fake_cluster(fleet(), host="0.0.0.0") as c:
        assert httpx.get(c.url + "/status", timeout=5.0).status_code == 401
        wrong = httpx.get(c.url + "/status", headers={TOKEN_HEADER: "guess"}, timeout=5.0)
        assert wrong.status_code == 401
        r = httpx.get(c.url + "/status", headers={TOKEN_HEADER: c.token}, timeout=5.0)
        assert r.status_code == 200 and len(r.json()["instances"]) == 3


def test_status_is_open_on_loopback() -> None:
    with fake_cluster(fleet()) as c:
        assert httpx.get(c.url + "/status", timeout=5.0).status_code == 200


def test_prfaas_status_sends_the_admin_key() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PRFAAS_CLUSTER_TOKEN"}
    with fake_cluster(fleet(), host="0.0.0.0") as c:
        argv = [sys.executable, "-m", "prfaas.cli", "status", "--url", c.url]
        refused = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert refused.returncode == 1 and "--token" in refused.stderr
        shown = subprocess.run(
            [*argv, "--token", c.token], capture_output=True, text=True, timeout=60, env=env
        )
        assert shown.returncode == 0, shown.stderr
        assert "pd-d-0" in shown.stdout and "prfaas-0" in shown.stdout
