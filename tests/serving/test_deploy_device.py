"""Per-cluster and per-instance ``device``/``dtype``/``num_threads`` in deploy.yaml: validated
with a clear error, carried to each worker's command line, parsed into its EngineConfig."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prfaas.deploy.config import DeployConfigError, default_config, load_deploy_config
from prfaas.deploy.launcher import Launcher, WorkerSpawn


def load(tmp_path: Path, change: object) -> object:
    data = default_config().model_dump(mode="json")
    change(data)  # type: ignore[operator]
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_deploy_config(path)


def hetero(d: dict) -> None:  # type: ignore[type-arg]
    d["clusters"][0].update(device="cpu", dtype="float32")
    d["clusters"][1].update(device="cuda:0", dtype="float32")
    d["clusters"][0]["instances"][0].update(num_threads=3)


def test_a_device_per_cluster_and_instance(tmp_path: Path) -> None:
    cfg = load(tmp_path, hetero)
    local, remote = cfg.clusters  # type: ignore[attr-defined]
    assert [local.device_of(i) for i in local.instances] == ["cpu", "cpu"]
    assert remote.device_of(remote.instances[0]) == "cuda:0"
    assert local.instances[0].num_threads == 3

    def override(d: dict) -> None:  # type: ignore[type-arg]
        d["clusters"][0]["instances"][1].update(device="cuda")
        d["clusters"][0]["instances"][1].update(dtype="bfloat16")
        for c in d["clusters"]:
            c["dtype"] = "bfloat16"

    cfg = load(tmp_path, override)
    local = cfg.clusters[0]  # type: ignore[attr-defined]
    assert [local.device_of(i) for i in local.instances] == ["auto", "cuda"]
    assert {c.dtype_of(i) for c in cfg.clusters for i in c.instances} == {"bfloat16"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["clusters"][1].update(device="gpu"), "device must be auto, cpu, cuda"),
        (lambda d: d["clusters"][0]["instances"][0].update(device="cuda:x"), "cuda:x"),
        (lambda d: d["clusters"][1].update(dtype="int8"), "dtype"),
        (lambda d: d["clusters"][0]["instances"][0].update(num_threads=0), "num_threads"),
        (lambda d: d["clusters"][0]["instances"][1].update(kv_cache_gb=-1), "kv_cache_gb"),
        # auto is float32 on a CPU and bfloat16 on a GPU: KV would be refused between them
        (lambda d: d["clusters"][1].update(device="cuda"), "same explicit dtype"),
        (
            lambda d: (hetero(d), d["clusters"][1].update(dtype="bfloat16")),
            "cpu/float32, cuda:0/bfloat16",
        ),
    ],
)
def test_bad_devices_name_the_problem(tmp_path: Path, change: object, message: str) -> None:
    with pytest.raises(DeployConfigError, match=message):
        load(tmp_path, change)


def test_the_worker_command_line_carries_them() -> None:
    spawn = WorkerSpawn("w", "c", "prefill", 1, 2, ("http://g",), None, None, {})
    flags = {"--device", "--dtype", "--num-threads", "--kv-cache-gb", "--block-size"}
    assert not flags & set(spawn.argv())
    args = WorkerSpawn(
        *("w", "c", "prefill", 1, 2, ("http://g",), None, None, {}),
        device="cuda:1",
        dtype="float16",
        num_threads=4,
        kv_cache_gb=2.5,
        block_size=32,
    ).argv()
    assert args[args.index("--block-size") + 1] == "32"
    assert args[args.index("--device") + 1] == "cuda:1"
    assert args[args.index("--dtype") + 1] == "float16"
    assert args[args.index("--num-threads") + 1] == "4"
    assert args[args.index("--kv-cache-gb") + 1] == "2.5"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "tpu"], "device must be auto, cpu or cuda[:N], got 'tpu'"),
        (["--block-size", "24"], "block_size must be a positive power of two, got 24"),
    ],
)
def test_a_bad_worker_setting_is_a_clear_error(flags: list[str], message: str) -> None:
    env = dict(os.environ, PRFAAS_CLUSTER_TOKEN="t")
    common = ["--name", "w", "--role", "prefill", "--cluster", "c", "--listen", "127.0.0.1:0"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "prfaas.cli",
            "worker",
            *common,
            "--gateway",
            "http://g",
            "--insecure",
            *flags,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"prfaas worker: {message}" in proc.stderr


class _PrintsArenas(WorkerSpawn):
    """A spawn whose process only prints the glibc arena cap it was started with."""

    def argv(self) -> list[str]:
        code = "import os; print(os.environ.get('MALLOC_ARENA_MAX'))"
        return [sys.executable, "-c", code]


@pytest.mark.parametrize(("ours", "seen"), [(None, "2"), ("8", "8")])
def test_spawned_workers_get_two_heap_arenas_unless_the_operator_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ours: str | None, seen: str
) -> None:
    if ours is None:
        monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    else:
        monkeypatch.setenv("MALLOC_ARENA_MAX", ours)
    launcher = Launcher("token", tmp_path)
    proc = launcher.spawn(_PrintsArenas("w", "c", "prefill", 1, 2, ("http://g",), None, None, {}))
    assert proc.wait(timeout=60) == 0
    assert (tmp_path / "w.log").read_text().strip() == seen
