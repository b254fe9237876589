"""Control-plane messages: round trips, bounds, and refusals of malformed input."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from prfaas.messages import (
    CacheEventMsg,
    DecodeCommand,
    Heartbeat,
    KvFailed,
    KvTarget,
    LinkReport,
    LogprobEntry,
    Message,
    PrefillCommand,
    PrefillResult,
    RoleSwitch,
    SamplingSpec,
    TokenEvent,
    WorkerInfo,
)

SPEC = SamplingSpec(max_tokens=8, temperature=0.0, stop=["\n"], seed=3)
EXAMPLES: list[Message] = [
    SPEC,
    WorkerInfo(
        name="pd-d-0",
        cluster="local",
        role="decode",
        http_url="http://h:1",
        kv_host="127.0.0.1",
        kv_port=7000,
        fingerprint="ab" * 16,
        model_name="m",
        max_model_len=2048,
        block_size=16,
        epoch=5,
    ),
    Heartbeat(
        name="w",
        epoch=1,
        role="prefill",
        num_waiting=1,
        num_running=2,
        kv_usage=0.5,
        fallbacks=0,
        events=[
            CacheEventMsg(block_hash="0f" * 16, stored=True),
            CacheEventMsg(block_hash="0e" * 16, stored=False, snapshot=True),
        ],
        seq=3,
        links=[
            LinkReport(
                link="wan",
                bytes_sent=1 << 30,
                rate_gbps=2.5,
                goodput_gbps=9.5,
                backlog_bytes=4 << 20,
                transfers_open=2,
                cap_gbps=10.0,
            )
        ],
    ),
    PrefillCommand(
        request_id="r",
        prompt_token_ids=[1, 2, 3],
        params=SPEC,
        tenant_salt_hex="00ff",
        deadline_s=5.0,
        target=KvTarget(host="h", port=9, tls=True, server_name="local"),
    ),
    PrefillResult(
        request_id="r", ok=True, kv_bytes=10, wire_bytes=12, transfer_s=0.5, cached_tokens=32
    ),
    DecodeCommand(
        request_id="r",
        prompt_token_ids=[1],
        params=SPEC,
        tenant_salt_hex="",
        expect_kv=True,
        deadline_s=1.0,
    ),
    TokenEvent(
        request_id="r",
        token_ids=[5],
        text="hi",
        finished=True,
        finish_reason="stop",
        cached_tokens=16,
    ),
    TokenEvent(
        request_id="r",
        token_ids=[5, 6],
        logprobs=[
            LogprobEntry(
                token_id=5, logprob=-0.25, rank=1, top_token_ids=[5], top_logprobs=[-0.25]
            ),
            LogprobEntry(token_id=6, logprob=-3.5, rank=4),
        ],
        prompt_logprobs=[None, LogprobEntry(token_id=9, logprob=-1.0, rank=2)],
    ),
    KvFailed(request_id="r", reason="link cut"),
    RoleSwitch(role="decode"),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    assert type(message).decode(message.encode()) == message


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",
        b'{"request_id": "r", "extra": 1}',
        b'{"request_id": "' + b"x" * 200 + b'", "reason": ""}',
    ],
)
def test_malformed_kv_failed_is_refused(raw: bytes) -> None:
    with pytest.raises(ValidationError):
        KvFailed.decode(raw)


def test_bounds_are_enforced() -> None:
    with pytest.raises(ValidationError):
        SamplingSpec(stop=["x"] * 17)
    with pytest.raises(ValidationError):
        CacheEventMsg(block_hash="zz" * 16, stored=True)
    with pytest.raises(ValidationError):
        KvTarget(host="h", port=70000)
    link = dict(link="l", bytes_sent=0, rate_gbps=0.0, goodput_gbps=0.0, backlog_bytes=0)
    with pytest.raises(ValidationError):
        LinkReport(**link, transfers_open=-1)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        LinkReport(**{**link, "link": "x" * 129}, transfers_open=0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        TokenEvent(request_id="r", fallback=True)  # the field is gone: extra fields are refused


def test_snapshot_and_hybrid_flags_default_off_and_dense_events_stay_small() -> None:
    """Old workers (no flags) still validate; a block event's JSON has no snapshot key."""
    block = CacheEventMsg(block_hash="0f" * 16, stored=True)
    assert block.encode() == b'{"block_hash":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f","stored":true}'
    assert not CacheEventMsg.decode(block.encode()).snapshot
    snap = CacheEventMsg(block_hash="0f" * 16, stored=True, snapshot=True)
    assert b'"snapshot":true' in snap.encode() and CacheEventMsg.decode(snap.encode()) == snap
    info = EXAMPLES[1]
    assert isinstance(info, WorkerInfo) and not info.hybrid
    assert b"hybrid" in info.encode()
    old = info.model_dump(exclude={"hybrid"})
    assert not WorkerInfo.model_validate(old).hybrid
    with pytest.raises(ValidationError):
        CacheEventMsg.decode(b'{"block_hash":"' + b"0f" * 16 + b'","stored":true,"snapshot":3}')
