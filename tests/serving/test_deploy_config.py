"""`prfaas serve --config`: the file is validated with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prfaas.gateway.deploy_config import DeployConfigError, default_config, load_deploy_config


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
        (lambda d: d["clusters"][0].update(kind="prfaas"), "exactly one cluster of kind 'pd'"),
        (lambda d: d.update(tenants=[{"name": "t", "clusters": ["nowhere"]}]), "nowhere"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, change: object, message: str) -> None:
    data = base()
    change(data)  # type: ignore[operator]
    with pytest.raises(DeployConfigError, match=message):
        load_deploy_config(write(tmp_path, data))


def test_unreadable_yaml(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text("clusters: [")
    with pytest.raises(DeployConfigError):
        load_deploy_config(path)
