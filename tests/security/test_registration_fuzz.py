"""Worker registration and heartbeats over real HTTP: without the cluster token a 401, a
mutated body (the mutators of benchmarks/fuzz_wire.py) a 4xx, never a 5xx, and a refused
message changes nothing in the fleet."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import httpx
import pytest
from benchmarks.fuzz_wire import json_seeds, mutate_bytes, mutate_json
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prfaas.gateway.fleet import WorkerFleet
from prfaas.gateway.internal import add_internal_routes
from prfaas.messages import TOKEN_HEADER, WorkerInfo
from prfaas.router.kv_index import KvIndex
from tests.gateway.conftest import ServerThread

TOKEN = "registration-token"
SEEDS = dict(json_seeds())


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[ServerThread, WorkerFleet]]:
    fleet = WorkerFleet({"local": "pd"}, KvIndex())
    app = FastAPI()
    add_internal_routes(app, fleet, TOKEN)
    with ServerThread(app) as server:
        yield server, fleet


def snapshot(fleet: WorkerFleet) -> tuple[object, ...]:
    return tuple(
        (n, r.info, r.num_waiting, r.num_running, r.fallbacks, r.draining)
        for n, r in sorted(fleet.workers.items())
    ) + (len(fleet.kv_index),)


def test_without_the_token_nothing_registers(gateway: tuple[ServerThread, WorkerFleet]) -> None:
    server, fleet = gateway
    for headers in ({}, {TOKEN_HEADER: "wrong"}):
        r = httpx.post(
            f"{server.base_url}/internal/register", content=SEEDS["WorkerInfo"], headers=headers
        )
        assert r.status_code == 401
    assert fleet.workers == {}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    endpoint=st.sampled_from(["register", "heartbeat"]),
    seed=st.integers(0, 2**32),
    structured=st.booleans(),
)
def test_mutated_registration_is_4xx_and_imports_nothing(
    gateway: tuple[ServerThread, WorkerFleet], endpoint: str, seed: int, structured: bool
) -> None:
    server, fleet = gateway
    url = f"{server.base_url}/internal/{endpoint}"
    headers = {TOKEN_HEADER: TOKEN}
    valid = SEEDS["WorkerInfo" if endpoint == "register" else "Heartbeat"]
    # A registered worker to heartbeat against (registering again is idempotent).
    assert (
        httpx.post(
            f"{server.base_url}/internal/register", content=SEEDS["WorkerInfo"], headers=headers
        ).status_code
        == 200
    )
    before = snapshot(fleet)
    rng = random.Random(seed)
    body = mutate_json(rng, valid) if structured else mutate_bytes(rng, valid, [valid])
    r = httpx.post(url, content=body, headers=headers)
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert snapshot(fleet) == before  # a refused message changed nothing
    else:  # accepted: it was a valid message after all
        decoded = json.loads(body)
        assert isinstance(decoded, dict)
        if endpoint == "register":
            fleet.forget(WorkerInfo.decode(body).name)
