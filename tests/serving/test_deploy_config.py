"""`prfaas serve --config`: the file is validated with errors that name the key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from prfaas.deploy.config import (
    DeployConfigError,
    default_config,
    load_deploy_config,
    warn_insecure_links,
)


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def base() -> dict[str, object]:
    return default_config().model_dump(mode="json")


def test_default_round_trips(tmp_path: Path) -> None:
    assert load_deploy_config(write(tmp_path, base())) == default_config()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d.update(port=-1), "port"),
        (lambda d: d["links"][0].update(src="mars"), "unknown cluster 'mars'"),
        (
            lambda d: d["clusters"][1]["instances"].append({"name": "x", "role": "decode"}),
            "prefill-only",
        ),
        (lambda d: d["clusters"][0].update(kind="prfaas"), "at least one cluster of kind 'pd'"),
        (lambda d: d.update(tenants=[{"name": "t", "clusters": ["nowhere"]}]), "nowhere"),
        (lambda d: d.update(kv_deadline_s=30, stream_stall_s=10), "stream_stall_s"),
        (lambda d: d.update(heartbeat_timeout_s=0.5), "heartbeat_timeout_s"),
        (lambda d: d.update(tenants=[{"name": "t", "burst_tokens": 5}]), "needs tokens_per_min"),
        (lambda d: d.update(tenants=[{"name": "t", "requests_per_s": 0}]), "requests_per_s"),
        (lambda d: d.update(tenants=[{"name": "t"}, {"name": "t"}]), "tenant names"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, change: object, message: str) -> None:
    data = base()
    change(data)  # type: ignore[operator]
    with pytest.raises(DeployConfigError, match=message):
        load_deploy_config(write(tmp_path, data))


def test_the_default_has_a_tls_link_on_its_one_kv_path() -> None:
    cfg = default_config()
    assert [(link.src, link.dst, link.tls) for link in cfg.links] == [("remote", "local", True)]
    assert warn_insecure_links(cfg) == []


def test_a_missing_link_is_refused_by_name(tmp_path: Path) -> None:
    data = base()
    data["links"] = []
    with pytest.raises(DeployConfigError, match="no link remote->local: cross-cluster KV needs"):
        load_deploy_config(write(tmp_path, data))


def test_a_link_without_tls_is_refused(tmp_path: Path) -> None:
    data = base()
    data["links"][0].update(tls=False)  # type: ignore[index]
    with pytest.raises(DeployConfigError, match="link remote->local: tls: false would send"):
        load_deploy_config(write(tmp_path, data))


def test_insecure_needs_tls_off(tmp_path: Path) -> None:
    data = base()
    data["links"][0].update(insecure=True)  # type: ignore[index]
    with pytest.raises(DeployConfigError, match="insecure: true needs tls: false"):
        load_deploy_config(write(tmp_path, data))


@pytest.mark.parametrize(
    "policy",
    [
        {"mode": "abundant"},
        {"control": {"adapt_mode": True}},  # may switch to abundant mode at run time
    ],
)
def test_cache_pulls_need_the_link_back(tmp_path: Path, policy: dict[str, object]) -> None:
    data = base()
    data["policy"] = policy
    with pytest.raises(DeployConfigError, match="no link local->remote"):
        load_deploy_config(write(tmp_path, data))
    data["links"].append({"src": "local", "dst": "remote"})  # type: ignore[attr-defined]
    assert len(load_deploy_config(write(tmp_path, data)).links) == 2


def test_no_pulls_no_link_back(tmp_path: Path) -> None:
    """Scarce mode, or a policy without pulls, sends KV one way only."""
    for policy in ({"mode": "scarce"}, {"name": "naive", "mode": "abundant"}):
        data = base()
        data["policy"] = policy
        assert len(load_deploy_config(write(tmp_path, data)).links) == 1


def test_insecure_is_accepted_and_logged_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = base()
    data["links"][0].update(tls=False, insecure=True)  # type: ignore[index]
    cfg = load_deploy_config(write(tmp_path, data))
    with caplog.at_level(logging.WARNING, logger="prfaas.deploy.config"):
        assert warn_insecure_links(cfg) == ["remote->local"]
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "INSECURE: link remote->local" in record.getMessage()


def test_unreadable_yaml(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text("clusters: [")
    with pytest.raises(DeployConfigError):
        load_deploy_config(path)


def test_a_spawned_worker_exits_when_its_launcher_dies(tmp_path: Path) -> None:
    """`prfaas serve` killed outright (SIGKILL) must not leave workers behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    # A launcher that spawns one worker (with --parent-pid) and then idles.
    script = tmp_path / "launch.py"
    script.write_text(
        "import os, subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-m', 'prfaas.cli', 'worker', '--name', 'w',"
        " '--role', 'prefill', '--cluster', 'c', '--listen', '127.0.0.1:0',"
        " '--gateway', 'http://127.0.0.1:9', '--insecure', '--model', sys.argv[1],"
        " '--parent-pid', str(os.getpid())], start_new_session=True,"
        " env=dict(os.environ, PRFAAS_CLUSTER_TOKEN='t'))\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    from tests.conftest import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path / "tiny", "llama")
    env = dict(os.environ, PRFAAS_CACHE_DIR=str(tmp_path / "cache"))
    launcher = subprocess.Popen(
        [sys.executable, str(script), str(model)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert launcher.stdout is not None
    worker_pid = int(launcher.stdout.readline())
    time.sleep(8.0)  # let the worker load and start its watchdog
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.kill(worker_pid, signal.SIGKILL)
    pytest.fail("the worker outlived its launcher")


def test_tenant_limits_and_the_usage_log_reach_the_gateway(tmp_path: Path) -> None:
    data = base()
    data["tenants"] = [
        {"name": "a", "requests_per_s": 2, "tokens_per_min": 600, "burst_tokens": 50},
        {"name": "b"},
    ]
    data["usage_log"] = "logs/usage.jsonl"
    cfg = load_deploy_config(write(tmp_path, data))
    assert cfg.usage_log == tmp_path / "logs/usage.jsonl"  # relative to the file
    a, b = cfg.tenants
    assert b.limits() is None
    limits = a.limits()
    assert limits is not None and (limits.requests_per_s, limits.tokens_per_min) == (2, 600)
    assert (limits.burst_requests, limits.burst_tokens) == (None, 50)


def test_the_heartbeat_timeout_reaches_the_fleet(tmp_path: Path) -> None:
    from prfaas.deploy.versions import fleet_and_router
    from prfaas.router.kv_index import KvIndex

    data = base()
    data["heartbeat_timeout_s"] = 12.5
    cfg = load_deploy_config(write(tmp_path, data))
    fleet, _ = fleet_and_router(cfg, KvIndex(), block_size=16, max_model_len=2048)
    assert fleet.heartbeat_timeout_s == 12.5


def test_the_engine_is_chosen_per_instance_and_a_mixed_fleet_takes_vllms_block_size() -> None:
    from prfaas.deploy.config import DeployConfig, default_config

    cfg = default_config()
    assert {cfg.engine_of(c, i) for c in cfg.clusters for i in c.instances} == {"reference"}
    assert cfg.block_size() == 16
    vllm = cfg.model_copy(update={"engine": "vllm"})
    assert {vllm.engine_of(c, i) for c in vllm.clusters for i in c.instances} == {"vllm"}
    assert vllm.block_size() == 32  # vLLM's CPU backend: multiples of 32
    raw = cfg.model_dump()
    raw["clusters"][1]["engine"] = "vllm"
    mixed = DeployConfig.model_validate(raw)
    assert {mixed.engine_of(c, i) for c in mixed.clusters for i in c.instances} == {
        "reference",
        "vllm",
    }
    assert mixed.block_size() == 32  # the reference instances too: one hash chain


def pd_cluster(name: str, prefix: str) -> dict[str, object]:
    instances = [
        {"name": f"{prefix}-p", "role": "prefill"},
        {"name": f"{prefix}-d", "role": "decode"},
    ]
    return {"name": name, "kind": "pd", "instances": instances}


def with_models(*models: dict[str, object]) -> dict[str, object]:
    return base() | {"served_model_name": "tiny", "models": list(models)}


def test_models_each_version_with_its_clusters_and_weights(tmp_path: Path) -> None:
    from prfaas.deploy.models import served_versions

    green = {"name": "tiny", "version": "green", "model": "/ckpt/v2", "weight": 25}
    other = {"name": "other", "model": "/ckpt/b", "sticky": "tenant"}
    cfg = load_deploy_config(
        write(
            tmp_path,
            with_models(
                green | {"clusters": [pd_cluster("green", "g")]},
                other | {"clusters": [pd_cluster("b", "b")]},
            ),
        )
    )
    versions = served_versions(cfg)
    assert [(v.key, v.weight, v.sticky_tenant) for v, _ in versions] == [
        ("tiny@v1", 75.0, False),  # the first version has the rest
        ("tiny@green", 25.0, False),
        ("other@v1", 100.0, True),
    ]
    # Each version's own view of the deployment: its model, clusters, no further models.
    views = {v.key: view for v, view in versions}
    assert [c.name for c in views["tiny@v1"].clusters] == ["local", "remote"]
    assert [c.name for c in views["tiny@green"].clusters] == ["green"]
    assert views["other@v1"].model == "/ckpt/b" and views["other@v1"].models == []


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (
            [{"name": "tiny", "version": "v1", "model": "m", "clusters": [pd_cluster("g", "g")]}],
            "configured twice",
        ),
        (
            [
                {
                    "name": "tiny",
                    "version": f"v{i}",
                    "model": "m",
                    "weight": 10,
                    "clusters": [pd_cluster(f"c{i}", f"c{i}")],
                }
                for i in (2, 3)
            ],
            "blue-green has two",
        ),
        ([{"name": "b", "model": "m", "clusters": [pd_cluster("local", "g")]}], "cluster names"),
        (
            [
                {
                    "name": "b",
                    "model": "m",
                    "clusters": [
                        {
                            "name": "g",
                            "kind": "pd",
                            "instances": [{"name": "pd-d-0", "role": "decode"}],
                        }
                    ],
                }
            ],
            "instance names",
        ),
        ([{"name": "b", "model": "m", "clusters": []}], "at least one cluster of kind 'pd'"),
        (
            [
                {
                    "name": "b",
                    "model": "m",
                    "clusters": [
                        pd_cluster("g", "g"),
                        {
                            "name": "far",
                            "kind": "prfaas",
                            "instances": [{"name": "f", "role": "prefill"}],
                        },
                    ],
                }
            ],
            "no link far->g",
        ),
        (
            [{"name": "b", "model": "m", "weight": 101, "clusters": [pd_cluster("g", "g")]}],
            "weight",
        ),
        (
            [{"name": "b", "model": "m", "sticky": "never", "clusters": [pd_cluster("g", "g")]}],
            "sticky",
        ),
    ],
)
def test_bad_models_name_the_problem(
    tmp_path: Path, models: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(DeployConfigError, match=message):
        load_deploy_config(write(tmp_path, with_models(*models)))


def test_a_tenant_may_be_resident_in_another_models_clusters(tmp_path: Path) -> None:
    from prfaas.deploy.models import residency, served_versions

    other = {"name": "b", "model": "m", "clusters": [pd_cluster("b-local", "b")]}
    data = with_models(other) | {"tenants": [{"name": "t", "clusters": ["local", "b-local"]}]}
    cfg = load_deploy_config(write(tmp_path, data))
    views = {v.key: view for v, view in served_versions(cfg)}
    assert residency(cfg, views["tiny@v1"].clusters) == {"t": frozenset({"local"})}
    assert residency(cfg, views["b@v1"].clusters) == {"t": frozenset({"b-local"})}


def test_a_tenants_regions_range_over_every_models_clusters(tmp_path: Path) -> None:
    """Residency by region spans the fleet: a tenant pinned to region ``us`` may use model
    b's clusters there and none of the top-level model's (region ``eu``)."""
    from prfaas.deploy.models import residency, served_versions

    b_pd = pd_cluster("b-local", "b") | {"region": "us"}
    other = {"name": "b", "model": "m", "clusters": [b_pd]}
    data = with_models(other) | {"tenants": [{"name": "t", "regions": ["us"]}, {"name": "u"}]}
    data["clusters"] = [c | {"region": "eu"} for c in data["clusters"]]
    cfg = load_deploy_config(write(tmp_path, data))
    views = {v.key: view for v, view in served_versions(cfg)}
    assert residency(cfg, views["tiny@v1"].clusters) == {"t": frozenset()}
    assert residency(cfg, views["b@v1"].clusters) == {"t": frozenset({"b-local"})}
    data["tenants"] = [{"name": "t", "regions": ["mars"]}]
    with pytest.raises(DeployConfigError, match="unknown region 'mars'"):
        load_deploy_config(write(tmp_path, data))
