"""`prfaas certs`, `prfaas link-emulator` and `prfaas bench transfer` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prfaas.transfer.cli import main
from prfaas.transfer.receiver import KvReceiver

from .conftest import make_payload, make_sender


def test_certs_command(tmp_path: Path) -> None:
    assert main(["certs", "--out", str(tmp_path), "--clusters", "east,west"]) == 0
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    bundles = [
        f"{n}/{f}" for n in ("east", "gateway", "west") for f in ("ca.pem", f"{n}.key", f"{n}.pem")
    ]
    assert names == sorted(["ca.key", "ca.pem", *bundles])  # the CA key in no bundle


def test_bench_transfer_loopback_json(capsys: object) -> None:
    args = ["bench", "transfer", "--size-mb", "16", "--connections", "2", "--codec", "int8"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    for key in ("goodput_gbps", "kv_rate_gbps", "bytes", "seconds", "codec", "connections"):
        assert key in out
    assert out["tls"] is False and out["codec"] == "int8" and out["bytes"] == 16 << 20
    assert out["kv_rate_gbps"] > 1.8 * out["goodput_gbps"]  # int8 halves the wire bytes


def test_link_emulator_command(receiver: KvReceiver) -> None:
    host, port = receiver.address
    cmd = [sys.executable, "-m", "prfaas.transfer.cli", "link-emulator"]
    cmd += ["--listen", "127.0.0.1:0", "--connect", f"{host}:{port}", "--rtt-ms", "2"]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        words = child.stdout.readline().split()
        assert words[0] == "relaying"
        emu_host, emu_port = words[1].rsplit(":", 1)
        header, arrays = make_payload()
        make_sender().send((emu_host, int(emu_port)), header, arrays)
        receiver.wait(header.request_id, 5)
        receiver.release(header.request_id)
    finally:
        child.terminate()
        child.wait(5)
        if child.stdout is not None:
            child.stdout.close()
