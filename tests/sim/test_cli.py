"""`prfaas simulate`: single runs, scenarios, the max-rate search and clean errors."""

import json
from pathlib import Path

import pytest

from tests.sim._cli import run_cli

ROOT = Path(__file__).parents[2]
CASE = ROOT / "examples/paper/case-study.yaml"
SCENARIOS = ROOT / "examples/paper/scenarios.yaml"


def test_single_run_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "simulate",
        "--config",
        str(CASE),
        "--deployment",
        "Homogeneous PD",
        "--rate",
        "1",
        "--duration",
        "300",
        "--warmup",
        "0",
        "--seed",
        "3",
        "--json",
    ]
    assert run_cli(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy"] == "homogeneous" and out["deployment"] == "Homogeneous PD"
    assert out["offload_fraction"] == 0.0 and out["egress_mean_gbps"] == 0.0
    assert 0 < out["requests"] == out["completed"]


def test_scenario_runs_every_policy_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "simulate",
        "--config",
        str(SCENARIOS),
        "--scenario",
        "burst",
        "--duration",
        "1500",
        "--json",
        "--plot",
        str(tmp_path),
    ]
    assert run_cli(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["runs"]) == {"prfaas-static", "prfaas-adaptive"}
    assert out["figures"]["prfaas-adaptive"]["recovery_s"] is not None
    assert out["met"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sim-burst-timeline.png",
        "sim-burst-ttft-cdf.png",
    ]


def test_find_max_rate_reports_the_planner_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "simulate",
        "--config",
        str(CASE),
        "--deployment",
        "Naive heterogeneous PD",
        "--find-max-rate",
        "--duration",
        "900",
        "--json",
    ]
    assert run_cli(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.8 < out["ratio_to_planner"] <= 1.05
    assert out["max_rate_rps"] == pytest.approx(out["ratio_to_planner"] * 2.469, rel=1e-3)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scenario", "nope"], "unknown scenario 'nope'"),
        (["--deployment", "Nope"], "unknown deployment 'Nope'"),
        (["--policy", "fastest"], "unknown policy 'fastest'"),
        (["--deployment", "Homogeneous PD", "--policy", "prfaas-static"], "needs a prfaas_pd"),
    ],
)
def test_errors_name_the_problem(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "simulate",
        "--config",
        str(SCENARIOS),
        "--rate",
        "1",
        "--duration",
        "60",
        "--warmup",
        "0",
        *extra,
    ]
    assert run_cli(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_settings_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"plan: {CASE}\ndefaults: {{ttft_slo_s: -1, bogus: 2}}\n")
    assert run_cli(["simulate", "--config", str(bad), "--rate", "1"]) == 2
    err = capsys.readouterr().err
    assert "ttft_slo_s: Input should be greater than 0" in err and "bogus: unknown key" in err


def test_a_warmup_longer_than_the_run_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--config", str(CASE), "--rate", "1", "--duration", "100"]
    assert run_cli(argv) == 2
    assert "warmup_s (300) must be < duration_s (100)" in capsys.readouterr().err


def test_bad_scenarios_name_the_scenario_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"plan: {CASE}\n"
        "scenarios:\n"
        "  b: {rate_rps: 1, bursts: [{start_s: 0, end_s: 10, factor: -2}], colour: red}\n"
        "  c: {settings: {duration_s: 0}}\n"
    )
    assert run_cli(["simulate", "--config", str(bad), "--scenario", "b"]) == 2
    err = capsys.readouterr().err
    assert "scenarios.b.bursts.0.factor: Input should be greater than or equal to 0" in err
    assert "scenarios.b.colour: unknown key" in err
