"""The worker app drives its engine only through the seam (``InstanceEngine``): a stand-in
engine (no torch, no model) behind the real FastAPI app shows that every route, the token
and role checks, the error event for refused input and the check report need nothing else.
A stand-in is right here because the subject is the app's contract with any engine; the
reference engine's own behaviour is tested in test_reference_engine.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

from fastapi.testclient import TestClient

from prfaas.config import EngineConfig
from prfaas.messages import (
    TOKEN_HEADER,
    BlockCounts,
    CacheEventMsg,
    DecodeCommand,
    KvTarget,
    LinkReport,
    PrefillCommand,
    PrefillResult,
    ProfileRequest,
    ProfileResult,
    PullCommand,
    PullResult,
    Role,
    SamplingSpec,
    TokenEvent,
    WorkerCheck,
)
from prfaas.worker import Worker, WorkerConfig, create_worker_app
from prfaas.worker.engine_api import EngineCheck, EngineFacts, InstanceEngine, InstanceStats

TOKEN = "seam-token"
LINK = LinkReport(
    link="wan", bytes_sent=10, rate_gbps=1.0, goodput_gbps=2.0, backlog_bytes=0, transfers_open=0
)


class StandIn:
    """Answers every seam call from fixed data, recording what it was asked."""

    facts = EngineFacts("ab" * 16, "stand-in", 16, 512, 256, False, "127.0.0.1", 7)

    def __init__(self) -> None:
        self.started = self.stopped = False
        self.failed: list[str] = []

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def prefill(self, cmd: PrefillCommand) -> PrefillResult:
        return PrefillResult(request_id=cmd.request_id, ok=True, cached_tokens=7)

    async def decode(self, cmd: DecodeCommand) -> AsyncIterator[TokenEvent]:
        if not cmd.prompt_token_ids:
            raise ValueError("the prompt is empty")
        yield TokenEvent(request_id=cmd.request_id, token_ids=[5], cached_tokens=3)
        yield TokenEvent(request_id=cmd.request_id, token_ids=[6], finished=True)

    def kv_failed(self, request_id: str, reason: str) -> bool:
        self.failed.append(request_id)
        return True

    async def pull(self, cmd: PullCommand) -> PullResult:
        return PullResult(request_id=cmd.request_id, ok=True, cached_tokens=16)

    async def profile(self, request: ProfileRequest) -> ProfileResult:
        raise ValueError("profile lengths exceed this engine's limit")

    def stats(self) -> InstanceStats:
        return InstanceStats(num_running=1, kv_usage=0.25, fallbacks=2, links=[LINK])

    def drain_cache_events(self) -> list[CacheEventMsg]:
        return [CacheEventMsg(block_hash="0f" * 16, stored=True)]

    async def check(self) -> EngineCheck:
        blocks = BlockCounts(total=8, free=8, cached=1, leased=0)
        return EngineCheck(None, blocks, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    async def switch_role(self, role: Role) -> None:
        pass

    async def free_cache(self) -> int:
        return 1


def worker(role: Role) -> tuple[Worker, StandIn]:
    config = WorkerConfig(
        name="w0",
        cluster="local",
        role=role,
        host="127.0.0.1",
        port=1,
        gateway_urls=("http://127.0.0.1:1",),  # nobody listens: registration just retries
        cluster_token=TOKEN,
        engine=EngineConfig(model=None),
    )
    engine = StandIn()
    seam: InstanceEngine = engine  # the stand-in has every call of the Protocol
    return Worker(config, seam), engine


def test_routes_speak_to_the_engine_only_through_the_seam() -> None:
    w, engine = worker("decode")
    auth = {TOKEN_HEADER: TOKEN}
    spec = SamplingSpec(max_tokens=2)
    decode = DecodeCommand(
        request_id="r", prompt_token_ids=[1], params=spec, tenant_salt_hex="", expect_kv=False,
        deadline_s=5.0,
    )  # fmt: skip
    prefill = PrefillCommand(
        request_id="p", prompt_token_ids=[1], params=spec, tenant_salt_hex="",
        target=KvTarget(host="h", port=9), deadline_s=5.0,
    )  # fmt: skip
    with TestClient(create_worker_app(w)) as client:
        assert engine.started
        assert client.get("/health").json() == {"status": "ok", "role": "decode"}
        assert client.post("/decode", content=decode.encode()).status_code == 401
        assert client.post("/prefill", content=prefill.encode(), headers=auth).status_code == 409
        lines = client.post("/decode", content=decode.encode(), headers=auth).text.splitlines()
        events = [TokenEvent.decode(line) for line in lines]
        assert [e.token_ids for e in events] == [[5], [6]] and events[0].cached_tokens == 3
        empty = decode.model_copy(update={"prompt_token_ids": []})
        (refused,) = client.post("/decode", content=empty.encode(), headers=auth).text.splitlines()
        assert TokenEvent.decode(refused).error == "the prompt is empty"
        r = client.post("/kv_failed", content=b'{"request_id": "r"}', headers=auth)
        assert r.json() == {"fallback": True} and engine.failed == ["r"]
        r = client.post("/profile", content=b'{"num_tokens": [8]}', headers=auth)
        assert r.status_code == 400 and "limit" in r.text
        check = WorkerCheck.decode(client.get("/internal/check", headers=auth).content)
        assert check.idle_clean and check.blocks.cached == 1
        assert client.post("/internal/free_cache").status_code == 401
        r = client.post("/internal/free_cache", headers=auth)
        assert r.json() == {"freed_blocks": 1}
    assert engine.stopped
    beat = w.heartbeat()
    assert (beat.num_running, beat.kv_usage, beat.fallbacks, beat.links) == (1, 0.25, 2, [LINK])
    assert w.info().block_size == 16 and w.info().kv_port == 7


def test_the_worker_package_imports_no_engine() -> None:
    code = (
        "import sys, prfaas.worker; print('torch' in sys.modules, 'prfaas.engine' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_health_is_503_until_the_engine_runs() -> None:
    w, engine = worker("prefill")
    app = create_worker_app(w)
    before = TestClient(app)  # no lifespan: the engine was never started
    r = before.get("/health")
    assert not engine.started
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    with TestClient(app) as client:
        assert engine.started
        assert client.get("/health").json() == {"status": "ok", "role": "prefill"}
    assert engine.stopped
    assert before.get("/health").status_code == 503  # stopped: not ready again
