"""Regions in deploy.yaml (``deploy.regions``): a ``region`` per cluster, ``regions`` per
tenant; what the gateway derives from them, and the mistakes refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from prfaas.deploy.config import DeployConfigError, kv_paths, load_deploy_config
from prfaas.deploy.regions import region_map, residency, tenant_regions


def two_regions() -> dict[str, Any]:
    def pd(name: str, region: str) -> dict[str, Any]:
        instances = [
            {"name": f"{name}-p", "role": "prefill"},
            {"name": f"{name}-d", "role": "decode"},
        ]
        return {"name": name, "kind": "pd", "region": region, "instances": instances}

    return {
        "clusters": [
            pd("eu-pd", "eu"),
            pd("us-pd", "us"),
            {"name": "pf", "kind": "prfaas", "instances": [{"name": "pf-0", "role": "prefill"}]},
        ],
        "links": [{"src": "pf", "dst": "eu-pd"}, {"src": "pf", "dst": "us-pd"}],
        "tenants": [
            {"name": "pinned", "regions": ["eu"]},
            {"name": "eu-us", "regions": ["eu", "us"]},
            {"name": "eu-pd-only", "regions": ["eu", "us"], "clusters": ["eu-pd"]},
            {"name": "free"},
        ],
    }


def load(tmp_path: Path, data: dict[str, Any]) -> Any:
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_deploy_config(path)


def test_two_regions_give_each_tenant_its_clusters_and_order(tmp_path: Path) -> None:
    cfg = load(tmp_path, two_regions())
    assert residency(cfg) == {
        "pinned": frozenset({"eu-pd"}),  # pf is a region of its own ("pf"), not eu
        "eu-us": frozenset({"eu-pd", "us-pd"}),
        "eu-pd-only": frozenset({"eu-pd"}),
    }
    assert tenant_regions(cfg)["eu-us"] == ("eu", "us") and "free" not in tenant_regions(cfg)
    regions = region_map(cfg, 8)
    assert regions.order == ("eu", "us") and regions.pd_cluster == {"eu": "eu-pd", "us": "us-pd"}
    assert regions.offload == {"eu-pd": frozenset({"pf"}), "us-pd": frozenset({"pf"})}
    assert kv_paths(cfg) == [("pf", "eu-pd"), ("pf", "us-pd")]


def test_a_prfaas_cluster_serves_only_the_regions_it_has_a_link_to(tmp_path: Path) -> None:
    data = two_regions()
    data["links"] = data["links"][:1]
    assert region_map(load(tmp_path, data), None).offload["us-pd"] == frozenset()
    data["links"] = []
    with pytest.raises(DeployConfigError, match="PrfaaS cluster 'pf' has no link to a PD"):
        load(tmp_path, data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["clusters"][1].update(region="eu"),
            "'eu-pd' and 'us-pd' are both PD clusters of region 'eu'",
        ),
        (lambda d: d["tenants"].append({"name": "x", "regions": ["mars"]}), "unknown region"),
        (lambda d: d["tenants"].append({"name": "x", "regions": ["eu", "eu"]}), "listed twice"),
        (
            lambda d: d["tenants"].append({"name": "x", "regions": ["pf"]}),
            "leave no PD cluster to decode in",
        ),
        (lambda d: d["clusters"][0].update(region="a b"), "region"),
    ],
)
def test_region_mistakes_are_refused_by_name(tmp_path: Path, change: Any, message: str) -> None:
    data = two_regions()
    change(data)
    with pytest.raises(DeployConfigError, match=message):
        load(tmp_path, data)
