"""Regions in the router (``router.regions``): a request decodes in its tenant's first region
that can serve, offloads only to PrfaaS clusters linked to that region and allowed to the
tenant, and comes back home once home serves again."""

from __future__ import annotations

import dataclasses

import pytest

from prfaas.router.kv_index import KvIndex
from prfaas.router.policies import PrfaasThreshold
from prfaas.router.regions import RegionMap
from prfaas.router.router import Router, RouterConfig
from prfaas.router.types import ClusterView, InstanceView, NoRouteError, RouteRequest, RouterState
from tests.router.fleet import StaticFleet

# Regions eu and us, each a PD cluster; PrfaaS cluster "eu-r" in eu serves both, "us-r" in us
# serves us only.
REGIONS = RegionMap(
    region_of={"eu-pd": "eu", "us-pd": "us", "eu-r": "eu", "us-r": "us"},
    pd_cluster={"eu": "eu-pd", "us": "us-pd"},
    order=("eu", "us"),
    offload={"eu-pd": frozenset({"eu-r"}), "us-pd": frozenset({"eu-r", "us-r"})},
    max_load_per_decode=4,
)
EU = frozenset({"eu-pd", "eu-r"})
EU_US = EU | {"us-pd", "us-r"}


def fleet() -> StaticFleet:
    return StaticFleet(
        [
            ClusterView("eu-pd", "pd"),
            ClusterView("us-pd", "pd"),
            ClusterView("eu-r", "prfaas"),
            ClusterView("us-r", "prfaas"),
        ],
        [
            InstanceView("eu-p", "eu-pd", "prefill"),
            InstanceView("eu-d", "eu-pd", "decode"),
            InstanceView("us-p", "us-pd", "prefill"),
            InstanceView("us-d", "us-pd", "decode"),
            InstanceView("eu-r0", "eu-r", "prefill"),
            InstanceView("us-r0", "us-r", "prefill"),
        ],
    )


def make() -> tuple[Router, StaticFleet]:
    f = fleet()
    index = KvIndex()
    for inst in f.instance_views:
        index.register(inst.name, inst.cluster)
    router = Router(
        RouterConfig(block_tokens=100),
        PrfaasThreshold(),
        f,
        index,
        RouterState(500.0),
        regions=REGIONS,
    )
    return router, f


def request(
    rid: str, prompt_len: int, allowed: frozenset[str] | None, regions: tuple[str, ...] | None
) -> RouteRequest:
    return RouteRequest(rid, "t", prompt_len, tuple(range(prompt_len // 100)), allowed, regions)


def set_instance(f: StaticFleet, name: str, **change: object) -> None:
    f.instance_views = [
        dataclasses.replace(i, **change) if i.name == name else i  # type: ignore[arg-type]
        for i in f.instance_views
    ]


def test_a_request_decodes_in_its_tenants_first_region_and_offloads_inside_it() -> None:
    router, _ = make()
    short = router.route(request("a", 200, EU_US, ("us", "eu")))
    assert (short.prefill_instance, short.decode_instance) == ("us-p", "us-d")
    long = router.route(request("b", 2000, EU_US, ("us", "eu")))
    assert long.path == "prfaas" and long.decode_instance == "us-d"
    long = router.route(request("c", 2000, EU, ("eu",)))
    assert (long.prefill_instance, long.decode_instance) == ("eu-r0", "eu-d")  # not us-r
    anywhere = router.route(request("d", 200, None, None))
    assert anywhere.decode_instance == "eu-d"  # the deployment's order


def test_a_down_region_sends_its_tenants_on_and_they_come_back() -> None:
    router, f = make()
    set_instance(f, "eu-d", healthy=False)
    moved = router.route(request("a", 2000, EU_US, ("eu", "us")))
    assert moved.decode_instance == "us-d"
    assert moved.prefill_cluster in ("eu-r", "us-r")  # us-pd may use both, both allowed
    with pytest.raises(NoRouteError, match="no allowed region can serve"):
        router.route(request("b", 200, EU, ("eu",)))
    set_instance(f, "eu-d", healthy=True)
    assert router.route(request("c", 200, EU_US, ("eu", "us"))).decode_instance == "eu-d"


def test_a_full_region_spills_over_only_while_another_allowed_one_has_room() -> None:
    router, f = make()
    set_instance(f, "eu-d", load=4)  # at max_load_per_decode
    assert REGIONS.state("eu", f.instance_views) == "full"
    assert router.route(request("a", 200, EU_US, ("eu", "us"))).decode_instance == "us-d"
    assert router.route(request("b", 200, EU, ("eu",))).decode_instance == "eu-d"  # only home
    set_instance(f, "us-d", load=9)
    assert router.route(request("c", 200, EU_US, ("eu", "us"))).decode_instance == "eu-d"


def test_residency_narrows_the_regions_and_their_offload() -> None:
    router, _ = make()
    only_us_pd = frozenset({"us-pd"})  # a tenant whose clusters leave out both PrfaaS ones
    long = router.route(request("a", 2000, only_us_pd, None))
    assert (long.path, long.decode_instance) == ("pd-p", "us-d")
    assert REGIONS.preference(request("b", 1, only_us_pd, ("eu", "us"))) == ["us"]
    assert REGIONS.rank(request("c", 1, EU_US, ("us", "eu")), "eu-pd") == 1
    assert REGIONS.rank(request("c", 1, EU, ("eu",)), "us-pd") == 1  # not allowed: last
