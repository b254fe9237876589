"""The blue-green traffic split and the model catalog: plain Python, no server."""

from __future__ import annotations

import random
from typing import Any

import pytest

from prfaas.gateway.catalog import ModelCatalog, ServedVersion, UnknownModel
from prfaas.gateway.traffic import TrafficSplit


def test_weights_are_percents_of_new_sessions() -> None:
    split = TrafficSplit({"blue": 100.0, "green": 0.0}, rng=random.Random(0))
    assert {split.pick() for _ in range(200)} == {"blue"}
    assert split.set_weight("green", 30) == {"blue": 70.0, "green": 30.0}
    picks = [split.pick() for _ in range(4000)]
    # 30 % of 4000 is 1200; the binomial's standard deviation is 29.
    assert 1050 < picks.count("green") < 1350
    split.set_weight("green", 100)
    assert {split.pick() for _ in range(200)} == {"green"}


def test_a_session_keeps_its_version_while_that_version_has_weight() -> None:
    split = TrafficSplit({"blue": 50.0, "green": 50.0}, rng=random.Random(1))
    first = {s: split.pick(s) for s in (f"s{i}" for i in range(100))}
    assert set(first.values()) == {"blue", "green"}
    for _ in range(5):
        assert {s: split.pick(s) for s in first} == first
    split.set_weight("green", 90)  # blue still serves: its sessions stay
    assert {s: split.pick(s) for s in first} == first
    split.set_weight("green", 100)  # blue drains: its sessions move, never back
    assert {split.pick(s) for s in first} == {"green"}
    split.set_weight("green", 50)
    assert {split.pick(s) for s in first} == {"green"}


def test_pinned_sessions_are_bounded() -> None:
    split = TrafficSplit({"blue": 50.0, "green": 50.0}, max_sessions=10, rng=random.Random(2))
    for i in range(50):
        split.pick(f"s{i}")
    assert len(split._sessions) == 10


@pytest.mark.parametrize(
    ("weights", "error"),
    [
        ({}, "one or two versions"),
        ({"a": 50.0, "b": 30.0}, "summing to 100"),
        ({"a": 40.0, "b": 30.0, "c": 30.0}, "one or two versions"),
        ({"a": 120.0, "b": -20.0}, "summing to 100"),
    ],
)
def test_bad_weights_are_refused(weights: dict[str, float], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        TrafficSplit(weights)


def test_set_weight_refusals() -> None:
    split = TrafficSplit({"blue": 100.0, "green": 0.0})
    with pytest.raises(ValueError, match="no version"):
        split.set_weight("red", 10)
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        split.set_weight("green", 101)
    with pytest.raises(ValueError, match="one version"):
        TrafficSplit({"only": 100.0}).set_weight("only", 50)
    assert split.weights == {"blue": 100.0, "green": 0.0}


class _Backend:
    """Only what the catalog reads of a backend."""

    def __init__(self, name: str, decode: int) -> None:
        self.model_name, self.max_model_len, self.tokenizer = name, 512, None
        self._decode = decode

    def num_decode(self) -> int:
        return self._decode

    async def submit(self, req: Any) -> Any:
        raise AssertionError("never called here")


def catalog() -> tuple[ModelCatalog, list[ServedVersion]]:
    blue = ServedVersion("tiny", "blue", _Backend("tiny", 2))
    green = ServedVersion("tiny", "green", _Backend("tiny", 1))
    other = ServedVersion("other", "v1", _Backend("other", 1))
    weights = {"tiny@blue": 100.0, "tiny@green": 0.0}
    return ModelCatalog([blue, green, other], weights, rng=random.Random(0)), [blue, green, other]


def test_the_catalog_picks_by_model_name() -> None:
    cat, (blue, _, other) = catalog()
    assert cat.names() == ["tiny", "other"]
    assert cat.pick(None, "acme", None) is blue  # no model: the first one's name
    assert cat.pick("other", "acme", None) is other
    with pytest.raises(UnknownModel):
        cat.pick("missing", "acme", None)
    assert cat.num_decode() == 4
    assert cat.usage_label(blue) == "tiny@blue"  # two versions: the version is named
    assert cat.usage_label(other) == "other"


def test_sessions_are_per_tenant() -> None:
    cat, _ = catalog()
    cat.set_weight("tiny", "green", 50)
    seen = {cat.pick("tiny", "acme", "chat-1") for _ in range(20)}
    assert len(seen) == 1
    # Another tenant's same session id is another session: over many, both versions.
    others = {cat.pick("tiny", f"t{i}", "chat-1").version for i in range(60)}
    assert others == {"blue", "green"}


def test_tenant_stickiness_without_a_session_header() -> None:
    blue = ServedVersion("tiny", "blue", _Backend("tiny", 1))
    green = ServedVersion("tiny", "green", _Backend("tiny", 1))
    weights = {"tiny@blue": 50.0, "tiny@green": 50.0}
    cat = ModelCatalog([blue, green], weights, sticky_tenants=frozenset({"tiny"}))
    for tenant in ("a", "b", "c", "d"):
        assert len({cat.pick("tiny", tenant, None) for _ in range(20)}) == 1


def test_a_version_drains_once_at_weight_zero_and_nothing_held() -> None:
    cat, (blue, green, _) = catalog()
    drained: list[str] = []
    cat.on_drained = lambda v: drained.append(v.key)
    cat.set_weight("tiny", "green", 0)  # green was already at 0, held nothing
    assert drained == ["tiny@green"]
    cat.hold(blue)
    cat.hold(blue)
    cat.set_weight("tiny", "green", 100)
    assert drained == ["tiny@green"]  # blue still holds two requests
    cat.drop(blue)
    assert drained == ["tiny@green"]
    cat.drop(blue)
    assert drained == ["tiny@green", "tiny@blue"]
    assert cat.drained(blue) and not cat.drained(green)
    cat.set_weight("tiny", "green", 100)  # no second report of the same drain
    assert drained == ["tiny@green", "tiny@blue"]
    cat.set_weight("tiny", "green", 50)  # blue serves again: a later drain is a new one
    assert not cat.drained(blue)
    cat.set_weight("tiny", "green", 100)
    assert drained == ["tiny@green", "tiny@blue", "tiny@blue"]
