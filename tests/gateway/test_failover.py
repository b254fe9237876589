"""Dispatch's reservation rule and decode failover (issue #13), on fake workers (``tests/fakes``:
the gateway's logic, not engines; ``tests/reliability/test_failover.py`` runs real ones).

- No reservation, no remote prefill: the gateway sends the PrefillCommand only after the
  decode worker said it holds blocks for the KV.
- A decode stream lost mid-way (stuck step, wedged worker, dead worker) resumes at another
  decode instance with the tokens already streamed; the client's answer is the one of an
  uninterrupted run. The fakes answer token i with ``w{3 + i}`` whichever instance sends it,
  so "identical" is checkable here; the real test checks it for a real model.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

import httpx

from tests.fakes.cluster import FakeCluster, fake_cluster
from tests.fakes.worker import FakeWorker
from tests.gateway.test_dispatch import LONG, SHORT, complete, fleet, wait_until

FULL = "".join(f" w{3 + i}" for i in range(8))  # 8 tokens: the fakes' uninterrupted answer


def two_decoders() -> list[FakeWorker]:
    workers = [*fleet(), FakeWorker("pd-d-1", "decode", "local")]
    for w in workers:
        w.behaviour.tokens = 8
    return workers


def stream_text(c: FakeCluster, on_chunk: Callable[[int], None] | None = None) -> str:
    """The streamed completion's text; ``on_chunk(i)`` runs as chunk ``i`` arrives."""
    body = {"model": "fake", "prompt": SHORT, "max_tokens": 8, "stream": True}
    texts: list[str] = []
    with httpx.stream("POST", c.url + "/v1/completions", json=body, timeout=30.0) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            if on_chunk is not None:
                on_chunk(len(texts))
            texts.append(chunk["choices"][0]["text"])
    return "".join(texts)


def assert_resumed(c: FakeCluster) -> None:
    """pd-d-1 took over after pd-d-0's two tokens; every slot and stream was given back."""
    (resumed,) = c.workers["pd-d-1"].received.decodes
    assert resumed.resume_token_ids == [3, 4] and not resumed.expect_kv
    admission = c.deployment.app.state.admission
    wait_until(lambda: admission.in_flight == 0 and not admission.by_instance)
    lost = c.workers["pd-d-0"].received
    wait_until(lambda: len(lost.abandoned) == len(lost.decodes) == 1)  # it was hung up on


def test_without_a_reservation_the_prompt_is_not_prefilled_remotely() -> None:
    with fake_cluster(fleet()) as c:
        c.workers["pd-d-0"].behaviour.reserve = False
        r = complete(c.url, LONG)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == " w3 w4 w5 w6"
        assert r.headers["x-prfaas-route"].startswith("prfaas")  # routed there, not sent
        assert c.workers["prfaas-0"].received.prefills == []
        c.workers["pd-d-0"].behaviour.reserve = True
        assert complete(c.url, LONG).status_code == 200
        assert len(c.workers["prfaas-0"].received.prefills) == 1


def test_the_prefill_waits_for_the_reservation() -> None:
    with fake_cluster(fleet()) as c:
        held = asyncio.Event()
        c.workers["pd-d-0"].behaviour.hold_reservation = held
        answers: list[httpx.Response] = []
        request = threading.Thread(target=lambda: answers.append(complete(c.url, LONG)))
        request.start()
        wait_until(lambda: len(c.workers["pd-d-0"].received.decodes) == 1)
        time.sleep(0.3)
        assert c.workers["prfaas-0"].received.prefills == []  # nothing before the answer
        server = c.servers["pd-d-0"]
        assert server.loop is not None
        server.loop.call_soon_threadsafe(held.set)
        request.join(10)
        assert answers and answers[0].status_code == 200
        assert len(c.workers["prfaas-0"].received.prefills) == 1


def test_a_wedged_decode_worker_fails_over_mid_stream() -> None:
    with fake_cluster(two_decoders(), stream_stall_s=60.0) as c:
        c.deployment.fleet.heartbeat_timeout_s = 1.0
        wedged = c.workers["pd-d-0"].behaviour  # both idle: the router picks pd-d-0 first
        wedged.stall_after = 2

        def wedge(chunk: int) -> None:
            if chunk == 0:
                wedged.heartbeats = False

        started = time.monotonic()
        assert stream_text(c, on_chunk=wedge) == FULL
        assert time.monotonic() - started < 1.0 + 2.0
        assert_resumed(c)


def test_a_stuck_stream_fails_over_after_the_stall_deadline_and_whole_answers_too() -> None:
    with fake_cluster(two_decoders(), stream_stall_s=1.0, kv_deadline_s=0.5) as c:
        c.workers["pd-d-0"].behaviour.stall_after = 2  # heartbeats go on: a stuck step
        r = complete(c.url, SHORT, max_tokens=8)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == FULL
        assert r.json()["usage"]["completion_tokens"] == 8
        assert_resumed(c)


def test_a_decode_worker_that_dies_mid_stream_fails_over() -> None:
    with fake_cluster(two_decoders()) as c:
        c.workers["pd-d-0"].behaviour.end_early = True  # the body ends before its last token
        r = complete(c.url, SHORT, max_tokens=8)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == FULL
        (resumed,) = c.workers["pd-d-1"].received.decodes
        assert resumed.resume_token_ids == [3 + i for i in range(7)]


def test_a_failed_over_request_counts_against_its_new_instance() -> None:
    """Admission's per-instance count (the load the router balances and bounds) follows the
    request to the instance it resumed at, and is given back once, there."""
    with fake_cluster(two_decoders(), stream_stall_s=1.0, kv_deadline_s=0.5) as c:
        c.workers["pd-d-0"].behaviour.stall_after = 2
        c.workers["pd-d-1"].behaviour.token_gap_s = 0.05
        admission = c.deployment.app.state.admission
        counts: list[dict[str, int]] = []

        def count(chunk: int) -> None:
            counts.append(dict(admission.by_instance))

        assert stream_text(c, on_chunk=count) == FULL
        assert counts[0] == {"pd-d-0": 1}  # the first chunk came from pd-d-0
        moved = counts.index({"pd-d-1": 1})  # ValueError: never counted at pd-d-1
        assert all("pd-d-0" not in seen for seen in counts[moved:]), counts
        assert_resumed(c)
