"""Pacing: the cap holds (±5 % over 2 s, end to end), transfers share it fairly, earlier
deadlines go first, and the cap can change while transfers run."""

from __future__ import annotations

import threading
import time

import pytest

from prfaas.transfer.pacing import Flow, Pacer
from prfaas.transfer.receiver import KvReceiver

from .conftest import make_payload, make_sender

GRANT = 64 << 10


def _drain(flow: Flow, stop: threading.Event, sent: list[int], index: int) -> None:
    while not stop.is_set():
        flow.acquire(GRANT)
        sent[index] += GRANT


def _run(pacer: Pacer, flows: list[Flow], seconds: float) -> list[int]:
    stop, sent = threading.Event(), [0] * len(flows)
    threads = [
        threading.Thread(target=_drain, args=(f, stop, sent, i)) for i, f in enumerate(flows)
    ]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    pacer.set_rate_gbps(None)  # release any waiter at once
    for thread in threads:
        thread.join(2)
    return sent


def near_cap(measured_gbps: float, cap_gbps: float) -> bool:
    """Never above the cap; close below it. The floor is loose because a loaded 2-core
    machine can starve the sender thread (benchmarks/transfer.py measures how close it gets
    on a quiet one: 96-100% of a 1 Gbit/s cap)."""
    return 0.75 * cap_gbps <= measured_gbps <= 1.05 * cap_gbps


def test_end_to_end_goodput_stays_at_the_cap(receiver: KvReceiver) -> None:
    rate_gbps = 0.2  # 25 MB/s: 2 s
    header, arrays = make_payload(num_full=96, num_blocks=64, num_linear=0)  # 48 MiB
    sender = make_sender(connections=2, rate_gbps=rate_gbps, chunk_bytes=256 << 10)
    stats = sender.send(receiver.address, header, arrays)
    assert stats.seconds > 1.8
    assert near_cap(stats.goodput_gbps, rate_gbps), stats.goodput_gbps
    link = sender.link.stats()
    assert link.backlogged_goodput_gbps is not None
    assert near_cap(link.backlogged_goodput_gbps, rate_gbps), link.backlogged_goodput_gbps
    receiver.release(header.request_id)


def test_two_flows_share_the_cap_evenly() -> None:
    pacer = Pacer(0.4)  # 50 MB/s
    sent = _run(pacer, [pacer.register(), pacer.register()], 1.0)
    assert sum(sent) * 8 / 1e9 == pytest.approx(0.4, rel=0.1)
    assert sent[0] == pytest.approx(sent[1], rel=0.1)


def test_earliest_deadline_first() -> None:
    pacer = Pacer(0.4)
    now = time.monotonic()
    urgent, relaxed = pacer.register(deadline_s=now + 1), pacer.register(deadline_s=now + 60)
    sent = _run(pacer, [relaxed, urgent], 0.6)
    assert sent[1] > 0.9 * sum(sent)


def test_late_joiner_gets_an_even_share_not_a_catch_up() -> None:
    pacer = Pacer(0.4)
    first = pacer.register()
    _run(pacer, [first], 0.3)
    pacer.set_rate_gbps(0.4)
    second = pacer.register()
    sent = _run(pacer, [first, second], 0.6)
    assert sent[0] == pytest.approx(sent[1], rel=0.15)


def test_cap_changes_at_run_time() -> None:
    pacer = Pacer(0.2)
    flow = pacer.register()
    stop, sent = threading.Event(), [0]
    thread = threading.Thread(target=_drain, args=(flow, stop, sent, 0))
    thread.start()
    time.sleep(0.5)
    before, t0 = sent[0], time.monotonic()
    pacer.set_rate_gbps(0.8)
    time.sleep(0.5)
    after_gbps = (sent[0] - before) * 8 / (time.monotonic() - t0) / 1e9
    stop.set()
    pacer.set_rate_gbps(None)
    thread.join(2)
    assert near_cap(before * 8 / 0.5 / 1e9, 0.2)
    assert near_cap(after_gbps, 0.8), after_gbps


def test_two_concurrent_transfers_share_one_link_end_to_end(receiver: KvReceiver) -> None:
    sender = make_sender(connections=2, rate_gbps=0.2, chunk_bytes=128 << 10)
    payloads = [
        make_payload(f"fair-{i}", num_full=12, num_blocks=64, num_linear=0, seed=i)
        for i in range(2)
    ]  # 6 MiB each: ~0.25 s alone at 25 MB/s, ~0.5 s together
    results: dict[str, float] = {}

    def run(header: object, arrays: object) -> None:
        stats = sender.send(receiver.address, header, arrays)  # type: ignore[arg-type]
        results[stats.request_id] = stats.seconds

    threads = [threading.Thread(target=run, args=p) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 2
    # Fair sharing: both finish together, each after about twice its solo time.
    assert results["fair-0"] == pytest.approx(results["fair-1"], rel=0.15)
    assert min(results.values()) > 0.4
    for header, _ in payloads:
        receiver.wait(header.request_id, 5)
        receiver.release(header.request_id)
