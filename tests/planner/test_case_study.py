"""Acceptance: examples/paper/case-study.yaml reproduces the paper's Table 6."""

import json
from pathlib import Path

import pytest

from prfaas.planner.build import build_inputs, run_plans
from prfaas.planner.config import load_plan_config
from tests.planner._cli import run_cli as main

CASE_STUDY = Path(__file__).resolve().parents[2] / "examples/paper/case-study.yaml"
# Table 6: Λ_max (req/s), N_p, N_d.
TABLE6 = {
    "prfaas_pd": (3.24, 3, 5),
    "homogeneous_pd": (2.11, 9, 3),
    "naive_heterogeneous": (2.45, None, 8),
}


@pytest.fixture(scope="module")
def results() -> dict[str, object]:
    config = load_plan_config(CASE_STUDY)
    return {r.kind: r for r in run_plans(build_inputs(config, CASE_STUDY.parent))}


def test_table6_throughput_splits_and_threshold(results: dict) -> None:
    for kind, (throughput, n_p, n_d) in TABLE6.items():
        r = results[kind]
        assert r.throughput_rps == pytest.approx(throughput, rel=0.03), kind
        assert (r.n_p, r.n_d) == (n_p, n_d), kind
    prfaas = results["prfaas_pd"]
    assert prfaas.threshold_tokens == pytest.approx(19400, rel=0.05)
    assert prfaas.n_prfaas == 4
    assert prfaas.theta_prfaas_rps == pytest.approx(1.61, rel=0.03)
    assert prfaas.theta_pd_p_rps == pytest.approx(1.64, rel=0.03)
    assert prfaas.theta_pd_d_rps == pytest.approx(3.91, rel=0.01)
    speedup = prfaas.throughput_rps / results["homogeneous_pd"].throughput_rps
    assert speedup == pytest.approx(1.54, rel=0.03)


def test_plan_json_has_exactly_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--config", str(CASE_STUDY), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["deployment"] for r in rows] == [
        "PrfaaS-PD",
        "Homogeneous PD",
        "Naive heterogeneous PD",
    ]
    assert list(rows[0]) == [
        "deployment",
        "threshold_tokens",
        "n_prfaas",
        "n_p",
        "n_d",
        "theta_prfaas_rps",
        "theta_pd_p_rps",
        "theta_pd_d_rps",
        "throughput_rps",
        "bottleneck",
        "offload_fraction",
        "l_long_tokens",
        "l_short_tokens",
        "egress_gbps",
    ]
    assert rows[1]["threshold_tokens"] is None and rows[1]["n_prfaas"] is None


def test_plan_table_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--config", str(CASE_STUDY), "--plot", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "19.4K" in out and "4 / 3 / 5" in out and "— / 9 / 3" in out
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["planner-throughput-vs-split.png", "planner-throughput-vs-threshold.png"]


def test_kv_throughput_cli(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["kv-throughput", "--model", "llama-3.1-8b", "--gpu", "h200", "--lengths", "1K,8K"]
    assert main([*args, "--instances", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["num_tokens"] for r in rows] == [1024, 8192]
    assert rows[0]["kv_bytes"] == 32 * 1024 * 2 * 8 * 128 * 2
    for r in rows:
        assert r["kv_throughput_gbps"] == pytest.approx(r["kv_bytes"] * 8 / r["prefill_s"] / 1e9)
        assert r["cluster_egress_gbps"] == pytest.approx(4 * r["kv_throughput_gbps"])
    assert main(["kv-throughput", "--model", "nope", "--gpu", "h200"]) == 2
    assert "neither a preset" in capsys.readouterr().err
