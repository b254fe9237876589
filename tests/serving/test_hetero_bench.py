"""benchmarks/hetero.py's ``--tiny`` path end to end on CPU: three real deployments (`prfaas
serve` on a random-weight Llama written on the spot), the same few requests through each.

It checks the report's shape and that every deployment served every request in full through
the paths its policy names, with no decode-side recompute; not the throughput ratios: here
every instance shares the same two cores, so they say nothing about heterogeneous hardware.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from benchmarks.hetero import PRESETS, deploy_yaml, parse_args, workload
from tests.deploy_helper import TEST_KV_GB, shared_cache

from prfaas.deploy.config import load_deploy_config

ROOT = Path(__file__).resolve().parents[2]
NUM_PROMPTS = 4


@pytest.mark.slow
def test_tiny_hetero_bench_serves_every_request_in_each_deployment(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "hetero.py"), "--tiny"]
        + ["--num-prompts", str(NUM_PROMPTS), "--json", str(out)]
        + ["--kv-cache-gb", str(TEST_KV_GB)]  # 4 prompts; the preset's pools are for 24
        + ["--checkpoint", str(tmp_path / "model"), "--log-dir", str(tmp_path / "logs")],
        env=dict(os.environ, PRFAAS_CACHE_DIR=shared_cache(tmp_path)),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PrfaaS / homogeneous throughput: live" in proc.stdout
    report = json.loads(out.read_text())
    tiny = PRESETS["tiny"]
    lengths = [
        r.prompt_len
        for r in workload(
            NUM_PROMPTS, tiny.median_len, tiny.sigma, tiny.max_len, tiny.output_len, 0
        )
    ]
    setup = report["setup"]
    assert setup["remote_device"] == "cpu" and setup["num_prompts"] == NUM_PROMPTS
    deps = report["deployments"]
    assert list(deps) == ["prfaas", "homogeneous", "naive"]
    for kind, d in deps.items():
        assert (d["completed"], d["failed"]) == (NUM_PROMPTS, 0), (kind, d["errors"])
        assert sorted(d["prompt_tokens"]) == sorted(lengths), kind  # one word, one token
        assert d["output_tokens"] == [tiny.output_len] * NUM_PROMPTS, kind
        assert d["fallbacks"] == 0, kind  # every shipped KV was used, none recomputed
        assert d["throughput_rps"] > 0 and 0 <= d["slo_ok"] <= NUM_PROMPTS
        assert d["ttft_ms"]["p90"] >= d["ttft_ms"]["median"] > 0
        assert abs(sum(d["route_share"].values()) - 1.0) < 1e-9
    assert len(deps["homogeneous"]["instances"]) == len(deps["prfaas"]["instances"]) == 3
    assert deps["homogeneous"]["route_share"] == {"pd-p": 1.0}
    assert deps["homogeneous"]["egress_bytes"] == 0
    assert deps["naive"]["route_share"] == {"prfaas": 1.0}
    assert deps["naive"]["egress_bytes"] > 0
    # t came from the live start-up profile, and the egress counts exactly the remote path.
    prfaas = deps["prfaas"]
    assert prfaas["threshold"]["source"] == "profiled"
    assert set(prfaas["threshold"]["prefill_s"]) == {"local", "remote"}
    assert (prfaas["egress_bytes"] > 0) == (prfaas["route_share"].get("prfaas", 0) > 0)
    planner = report["planner"]
    for key in ("prfaas_rps", "homogeneous_rps", "naive_rps", "ratio_prfaas_homogeneous"):
        assert planner[key] > 0, key
    assert planner["inputs"]["mean_prompt_tokens"] == pytest.approx(sum(lengths) / NUM_PROMPTS)


@pytest.mark.parametrize("kind", ["prfaas", "homogeneous", "naive"])
def test_the_gpu_deployments_are_valid_deploy_yamls(tmp_path: Path, kind: str) -> None:
    """What the GPU run would serve (no GPU needed to check the files): the remote instance on
    cuda, everything else on CPU, one explicit dtype, three instances."""
    a = parse_args(["--remote-device", "cuda", "--checkpoint", str(tmp_path / "m")])
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(deploy_yaml(kind, a, 8123, threads=5)))
    cfg = load_deploy_config(path)
    placed = {(i.name, c.device_of(i), c.dtype_of(i)) for c in cfg.clusters for i in c.instances}
    assert len(placed) == 3
    assert {d for n, d, _ in placed if n.startswith("prfaas")} <= {"cuda"}
    assert {d for n, d, _ in placed if not n.startswith("prfaas")} == {"cpu"}
    assert {t for *_, t in placed} == {"float32"}
    assert {i.kv_cache_gb for c in cfg.clusters for i in c.instances} == {8.0}
    assert cfg.policy.name == kind and a.model_size == "1b" and a.max_model_len == 4096
