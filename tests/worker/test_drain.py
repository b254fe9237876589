"""A role switch drains first, but not forever: a request that never finishes makes the
switch give up at the drain deadline with a reason, and the worker keeps serving in its
old role. The engine is the seam's stand-in (test_app_seam.py): its stats always report
one running request, which is exactly a request that never finishes, and no real engine
can be held in that state on demand."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import pytest
from fastapi.testclient import TestClient

from prfaas.messages import TOKEN_HEADER, RoleSwitch
from prfaas.worker import create_worker_app
from prfaas.worker.process import DrainTimeout

from .test_app_seam import TOKEN, worker


class Switches:
    def __init__(self) -> None:
        self.roles: list[str] = []

    async def switch_role(self, role: str) -> None:
        self.roles.append(role)


def test_a_drain_that_never_ends_gives_up_with_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    w, engine = worker("decode")
    w.config = dataclasses.replace(w.config, drain_timeout_s=0.3)
    switched = Switches()
    engine.switch_role = switched.switch_role  # type: ignore[method-assign]
    epoch = w.epoch
    start_s = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(DrainTimeout, match="1 request"):
        asyncio.run(asyncio.wait_for(w.switch_role("prefill"), 5.0))
    assert time.monotonic() - start_s < 2.0
    assert "role switch to prefill refused" in caplog.text
    assert w.role == "decode" and w.epoch == epoch and not w.draining
    assert switched.roles == []  # the engine was never asked to switch


def test_drain_timeout_must_be_positive() -> None:
    w, _ = worker("decode")
    with pytest.raises(ValueError, match="drain_timeout_s"):
        dataclasses.replace(w.config, drain_timeout_s=0.0)


def test_the_role_route_answers_409_with_the_reason() -> None:
    w, _ = worker("decode")
    w.config = dataclasses.replace(w.config, drain_timeout_s=0.3)
    with TestClient(create_worker_app(w)) as client:
        r = client.post(
            "/role", content=RoleSwitch(role="prefill").encode(), headers={TOKEN_HEADER: TOKEN}
        )
        assert r.status_code == 409 and "1 request" in r.text
        assert client.get("/health").json()["role"] == "decode"
