"""The bad-input cases of tests/gateway/test_bad_input.py against a spawned cluster
deployment (the cluster backend, real workers): each a 4xx in the OpenAI error format, the
gateway healthy afterwards and every decode slot given back. Completions only: the tiny
checkpoint has no chat template, so every chat request there is refused for that first."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.gateway.test_bad_input import CASES, assert_openai_error
from tests.security.conftest import Secured

AUTH = {"Authorization": "Bearer key-alice", "Content-Type": "application/json"}


COMPLETION_CASES = [c for c in CASES if c[1] == "/v1/completions"]


@pytest.mark.parametrize(
    ("name", "path", "body", "status", "code"),
    COMPLETION_CASES,
    ids=[c[0] for c in COMPLETION_CASES],
)
def test_bad_input_is_refused_by_the_cluster_gateway(
    secured: Secured,
    name: str,
    path: str,
    body: bytes | dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    if isinstance(body, dict) and "model" not in body:
        body = {**body, "model": "tiny"}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{secured.base_url}{path}", content=content, headers=AUTH, timeout=60)
    assert_openai_error(r, status, code)
    assert httpx.get(f"{secured.base_url}/health").json() == {"status": "ok"}


def test_cluster_gateway_still_serves_and_holds_no_slot(secured: Secured) -> None:
    r = httpx.post(
        f"{secured.base_url}/v1/completions",
        json={"model": "tiny", "prompt": "w5 w6", "max_tokens": 2},
        headers=AUTH,
        timeout=60,
    )
    assert r.status_code == 200
    status = httpx.get(f"{secured.base_url}/status").json()
    assert all(i["inflight"] == 0 for i in status["instances"])
