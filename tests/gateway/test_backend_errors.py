"""Backend refusals map to HTTP statuses; a failure mid-stream is an error event, not a
truncated answer; tenants get gateway-derived salts and never share a cache."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prfaas.engine.engine import Engine
from prfaas.gateway.backend import NoWorker, Overloaded
from prfaas.gateway.config import GatewayConfig
from tests.engine.helpers import make_engine
from tests.gateway.conftest import TINY_CHAT_TEMPLATE, FakeBackend, LocalServer, ServerThread

BODY = {"prompt": "w5 w6", "max_tokens": 4}


def set_fail(server: ServerThread, backend: FakeBackend, **fields: Any) -> None:
    async def apply() -> None:
        for name, value in fields.items():
            setattr(backend, name, value)

    server.run(apply())


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (Overloaded(2.5), 429, "3"),
        (NoWorker("no decode instance"), 503, None),
        (ValueError("prompt token ids must be in [0, 256)"), 400, None),
        (RuntimeError("bug"), 500, None),
    ],
)
def test_backend_refusals(
    fake_server: tuple[FakeBackend, ServerThread],
    error: BaseException,
    status: int,
    retry_after: str | None,
) -> None:
    backend, server = fake_server
    set_fail(server, backend, fail=error)
    try:
        r = httpx.post(f"{server.base_url}/v1/completions", json=BODY)
    finally:
        set_fail(server, backend, fail=None)
    assert r.status_code == status
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.headers.get("retry-after") == retry_after
    assert httpx.post(f"{server.base_url}/v1/completions", json=BODY).status_code == 200
    assert server.in_flight() == 0


@pytest.mark.parametrize("failure", ["fail_mid_stream", "end_early"])
def test_failure_mid_stream(fake_server: tuple[FakeBackend, ServerThread], failure: str) -> None:
    backend, server = fake_server
    set_fail(server, backend, **{failure: True})
    try:
        streamed = httpx.post(f"{server.base_url}/v1/completions", json={**BODY, "stream": True})
        whole = httpx.post(f"{server.base_url}/v1/completions", json=BODY)
    finally:
        set_fail(server, backend, **{failure: False})
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["type"] == "server_error"
    # The worker failed mid-answer: a bad gateway, not the gateway's own error.
    assert whole.status_code == 502 and whole.json()["error"]["type"] == "server_error"
    assert server.in_flight() == 0


def test_salt_is_derived_from_the_tenant_never_the_client(
    fake_server: tuple[FakeBackend, ServerThread],
) -> None:
    backend, server = fake_server
    body = {**BODY, "tenant_salt": "00"}  # no such field: refused, never used
    r = httpx.post(f"{server.base_url}/v1/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tenant_salt"
    body = {**BODY, "user": "someone-else"}
    r = httpx.post(f"{server.base_url}/v1/completions", json=body, headers={"x-tenant": "evil"})
    assert r.status_code == 200
    req = backend.submitted[-1]
    assert req.tenant == "default"
    assert len(req.tenant_salt) == 32 and req.tenant_salt != b"00"


def test_tenants_never_share_cached_prefixes(tiny_llama: Path, cache_dir: Path) -> None:
    engine: Engine = make_engine(tiny_llama, cache_dir)
    engine.tokenizer.chat_template = TINY_CHAT_TEMPLATE
    secret = b"s" * 32
    config = GatewayConfig(api_keys={"k-a": "a", "k-b": "b"}, server_secret=secret)
    server = LocalServer(engine, config)
    prompt = " ".join(f"w{3 + i}" for i in range(40))

    def cached(key: str) -> int:
        r = httpx.post(
            f"{server.base_url}/v1/completions",
            json={"prompt": prompt, "max_tokens": 2},
            headers={"Authorization": f"Bearer {key}"},
        )
        return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])

    with server.thread:
        assert [cached("k-a"), cached("k-a"), cached("k-b"), cached("k-b")] == [0, 32, 0, 32]
        server.check_engine()
    want = hmac.new(secret, b"a", hashlib.sha256).digest()
    assert server.app.state.authenticator.authenticate("Bearer k-a").salt == want


@pytest.fixture
def small_body_server(tiny_tokenizer: Any) -> Iterator[ServerThread]:
    from prfaas.gateway.app import create_app

    app = create_app(FakeBackend(tiny_tokenizer), GatewayConfig(max_body_bytes=1000))
    with ServerThread(app) as server:
        yield server


def test_chunked_body_over_limit_is_413(small_body_server: ServerThread) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(50):
            yield b"w5 " * 10
        yield b'"}'

    r = httpx.post(f"{small_body_server.base_url}/v1/completions", content=chunks())
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_queue_ttl_is_429(tiny_tokenizer: Any) -> None:
    from prfaas.gateway.app import create_app

    backend = FakeBackend(tiny_tokenizer)
    app = create_app(backend, GatewayConfig(queue_ttl_s=0.2, retry_after_s=2))
    with ServerThread(app) as server:
        set_fail(server, backend, submit_hold=asyncio.Event())
        r = httpx.post(f"{server.base_url}/v1/completions", json=BODY)
        assert r.status_code == 429 and r.headers["retry-after"] == "2"
        assert "timed out" in r.json()["error"]["message"]
        set_fail(server, backend, submit_hold=None)
        assert httpx.post(f"{server.base_url}/v1/completions", json=BODY).status_code == 200
        assert server.in_flight() == 0
