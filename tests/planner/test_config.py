"""Bad plan configs fail with a message naming the key, never a traceback."""

import json
from pathlib import Path

import pytest
import yaml

from prfaas.planner.build import build_inputs
from prfaas.planner.config import PlanConfigError, load_plan_config, parse_plan_config
from tests.planner._cli import run_cli as main

CASE_STUDY = Path(__file__).resolve().parents[2] / "examples/paper/case-study.yaml"


def _case_study() -> dict:
    return yaml.safe_load(CASE_STUDY.read_text())


def _error(raw: dict) -> str:
    with pytest.raises(PlanConfigError) as info:
        parse_plan_config(raw)
    return str(info.value)


def test_case_study_parses_with_binary_suffix() -> None:
    config = load_plan_config(CASE_STUDY)
    assert config.workload.lognormal is not None
    assert config.workload.lognormal.max_tokens == 131072
    assert len(config.deployments) == 3


def test_unknown_key_is_named() -> None:
    raw = _case_study()
    raw["link"]["bandwidth_mbps"] = 5
    assert "link.bandwidth_mbps: unknown key" in _error(raw)


def test_wrong_unit_is_named() -> None:
    raw = _case_study()
    raw["link"]["bandwidth_gbps"] = "100 Mbps"
    assert "link.bandwidth_gbps: expected a plain number in gbps, got '100 Mbps'" in _error(raw)


def test_negative_count_is_named() -> None:
    raw = _case_study()
    raw["deployments"][0]["pd"]["instances"] = -3
    assert "deployments.0.pd.instances: Input should be greater than or equal to 1" in _error(raw)


def test_missing_key_and_bad_reference_are_named() -> None:
    raw = _case_study()
    del raw["workload"]["lognormal"]["sigma"]
    assert "workload.lognormal.sigma: required key missing" in _error(raw)
    raw = _case_study()
    raw["deployments"][1]["pd"]["prefill_profile"] = "h100-1t"
    message = _error(raw)
    assert "deployments.1.pd.prefill_profile: unknown name 'h100-1t'" in message
    assert "h20-1t" in message


def test_cross_field_rules() -> None:
    raw = _case_study()
    raw["profiles"]["h20-1t"]["points"] = [{"num_tokens": 1, "prefill_s": 1}]
    assert "profiles.h20-1t" in _error(raw) and "exactly one" in _error(raw)
    raw = _case_study()
    del raw["deployments"][0]["prfaas"]
    assert "deployments.0" in _error(raw) and "needs prfaas" in _error(raw)
    raw = _case_study()
    raw["workload"]["lognormal"]["min_tokens"] = "256K"
    assert "min_tokens must be < max_tokens" in _error(raw)
    raw = _case_study()
    del raw["link"]
    assert "link: required" in _error(raw)


def test_cli_reports_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    raw = _case_study()
    raw["search"]["threshold_step_tokens"] = 0
    bad.write_text(yaml.safe_dump(raw))
    assert main(["plan", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "search.threshold_step_tokens" in err and "Traceback" not in err
    (tmp_path / "broken.yaml").write_text("profiles: [unclosed\n")
    assert main(["plan", "--config", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["plan", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_trace_workload_runs(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    requests = [
        {
            "timestamp": i,
            "input_length": 600 + 97 * i,
            "output_length": 100,
            "hash_ids": [i % 3, 100 + i],
        }
        for i in range(40)
    ]
    trace.write_text("\n".join(json.dumps(r) for r in requests))
    raw = _case_study()
    raw["workload"] = {"trace": {"path": "trace.jsonl", "prefix_cache": "unbounded"}}
    raw["search"]["threshold_step_tokens"] = 100
    config_path = tmp_path / "plan.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    assert main(["plan", "--config", str(config_path), "--json"]) == 0


def test_prfaas_profile_without_kv_sizes_is_named() -> None:
    raw = _case_study()
    for row in raw["profiles"]["h200-1t"]["points"]:
        del row["kv_mib"]
    config = parse_plan_config(raw)
    with pytest.raises(PlanConfigError, match=r"deployments.0.prfaas.prefill_profile: .*kv_mib"):
        build_inputs(config)
