"""The fault-drill messages: WorkerCheck and LinkControl round trips and refusals."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from prfaas.messages import BlockCounts, LinkControl, WorkerCheck


def check(**overrides: object) -> WorkerCheck:
    fields: dict[str, object] = dict(
        name="pd-d-0",
        pid=42,
        epoch=7,
        role="decode",
        blocks=BlockCounts(total=64, free=64, cached=5, leased=0),
        num_waiting=0,
        num_running=0,
        num_parked=0,
        num_streams=0,
        kv_connections=0,
        kv_landings=0,
        kv_allocated_bytes=0,
        kv_awaited=0,
        kv_sending=0,
        asyncio_tasks=5,
        threads=6,
    )
    fields.update(overrides)
    return WorkerCheck.model_validate(fields)


@pytest.mark.parametrize(
    "message",
    [check(), LinkControl(rate_gbps=0.5, stall_s=2.0, cut=True, blackhole=True), LinkControl()],
)
def test_round_trip(message: WorkerCheck | LinkControl) -> None:
    assert type(message).decode(message.encode()) == message


def test_idle_clean_allows_cached_blocks_only() -> None:
    assert check().idle_clean
    leased = BlockCounts(total=64, free=63, cached=5, leased=1)
    for dirty in (
        check(blocks=leased),
        check(integrity_error="block 3: ref_count 1, in free queue True"),
        check(num_parked=1),
        check(kv_landings=1, kv_allocated_bytes=4096),
        check(kv_connections=1),
        check(kv_awaited=1),
        check(kv_sending=1),
        check(num_streams=1),
    ):
        assert not dirty.idle_clean


def test_link_control_refuses_nonsense() -> None:
    for bad in ('{"rate_gbps": 0}', '{"stall_s": -1}', '{"cut": true, "drop": 1}'):
        with pytest.raises(ValidationError):
            LinkControl.decode(bad)
