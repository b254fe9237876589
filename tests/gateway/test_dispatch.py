"""The cluster gateway's dispatch logic against fake workers (``tests/fakes``): routing to
the right instances, kv_failed, a draining decode worker, 429 at capacity, failover when a
worker goes away, the block-size refusal, and which prefix hit the API reports. The gateway
is the real one (``deploy.serve.build_deployment``); no model is loaded."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest

from prfaas.gateway.middleware import ROUTE_HEADER
from tests.fakes.cluster import fake_cluster
from tests.fakes.worker import FakeWorker

SHORT = " ".join(f"w{3 + i}" for i in range(40))  # 40 tokens: under t = 64, PD-P
LONG = " ".join(f"w{3 + i % 200}" for i in range(200))  # 200 tokens: PrfaaS


def fleet() -> list[FakeWorker]:
    return [
        FakeWorker("pd-p-0", "prefill", "local"),
        FakeWorker("pd-d-0", "decode", "local"),
        FakeWorker("prfaas-0", "prefill", "remote"),
    ]


def complete(url: str, prompt: str, max_tokens: int = 4, **extra: Any) -> httpx.Response:
    body = {"model": "fake", "prompt": prompt, "max_tokens": max_tokens, **extra}
    return httpx.post(url + "/v1/completions", json=body, timeout=30.0)


def cached_tokens(r: httpx.Response) -> int:
    return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])


def wait_until(check: Any, timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_long_prompts_go_remote_short_ones_stay_local() -> None:
    with fake_cluster(fleet()) as c:
        long = complete(c.url, LONG)
        assert long.status_code == 200, long.text
        assert long.headers[ROUTE_HEADER] == "prfaas prefill=prfaas-0 decode=pd-d-0"
        assert long.json()["choices"][0]["text"] == " w3 w4 w5 w6"
        prefills = c.workers["prfaas-0"].received.prefills
        wait_until(lambda: prefills)  # sent beside the decode stream, not before it
        [cmd] = prefills
        assert cmd.target.link == "remote->local" and cmd.target.server_name == "local"
        assert len(cmd.prompt_token_ids) == 200
        short = complete(c.url, SHORT)
        assert short.headers[ROUTE_HEADER] == "pd-p prefill=pd-p-0 decode=pd-d-0"
        wait_until(lambda: c.workers["pd-p-0"].received.prefills)
        assert c.workers["pd-p-0"].received.prefills[0].target.link == "local"
        decodes = c.workers["pd-d-0"].received.decodes
        assert [d.expect_kv for d in decodes] == [True, True]
        assert c.deployment.app.state.admission.in_flight == 0


def test_a_failed_prefill_tells_the_decode_worker_at_once() -> None:
    with fake_cluster(fleet()) as c:
        c.workers["prfaas-0"].behaviour.prefill_ok = False
        r = complete(c.url, LONG)
        assert r.status_code == 200  # the decode side falls back; the request completes
        prefills = c.workers["prfaas-0"].received.prefills
        wait_until(lambda: prefills)
        request_id = prefills[0].request_id
        decode = c.workers["pd-d-0"]
        wait_until(lambda: decode.received.kv_failed)
        [failed] = decode.received.kv_failed
        assert failed.request_id == request_id and "transfer failed" in failed.reason


def test_a_draining_decode_worker_is_skipped_and_the_request_routed_again() -> None:
    workers = [*fleet(), FakeWorker("pd-d-1", "decode", "local")]
    with fake_cluster(workers) as c:
        c.workers["pd-d-0"].behaviour.decode_status = 409  # switching roles since its heartbeat
        r = complete(c.url, SHORT)  # both idle: the router tries pd-d-0 (name order) first
        assert r.status_code == 200, r.text
        assert r.headers[ROUTE_HEADER].endswith("decode=pd-d-1")
        assert len(c.workers["pd-d-0"].received.decodes) == 1
        assert c.deployment.fleet.workers["pd-d-0"].draining  # routed around from now on
        assert complete(c.url, SHORT).headers[ROUTE_HEADER].endswith("decode=pd-d-1")
        assert len(c.workers["pd-d-0"].received.decodes) == 1


def test_past_decode_capacity_and_queue_the_answer_is_429() -> None:
    overload = {"max_inflight_per_decode": 1, "max_queued": 0, "retry_after_s": 2.0}
    with fake_cluster(fleet(), overload=overload) as c:
        hold = asyncio.Event()  # set on the fake decode worker's loop
        c.workers["pd-d-0"].behaviour.hold_decode = hold
        first: list[httpx.Response] = []
        holder = threading.Thread(target=lambda: first.append(complete(c.url, SHORT)))
        holder.start()
        admission = c.deployment.app.state.admission
        wait_until(lambda: admission.by_instance.get("pd-d-0") == 1)
        refused = complete(c.url, SHORT)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "2"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        decode_loop = c.servers["pd-d-0"].loop
        assert decode_loop is not None
        decode_loop.call_soon_threadsafe(hold.set)
        holder.join(10)
        assert first and first[0].status_code == 200
        wait_until(lambda: admission.in_flight == 0 and not admission.by_instance)


def test_a_decode_worker_that_joins_serves_a_queued_request_at_once() -> None:
    overload = {"max_inflight_per_decode": 1, "max_queued": 1, "queue_ttl_s": 30.0}
    with fake_cluster(fleet(), overload=overload) as c:
        hold = asyncio.Event()  # pd-d-0 holds its one request until the end
        c.workers["pd-d-0"].behaviour.hold_decode = hold
        held = threading.Thread(target=lambda: complete(c.url, SHORT))
        held.start()
        admission = c.deployment.app.state.admission
        wait_until(lambda: admission.by_instance.get("pd-d-0") == 1)
        queued: list[httpx.Response] = []
        waiter = threading.Thread(target=lambda: queued.append(complete(c.url, SHORT)))
        waiter.start()
        wait_until(lambda: admission.queued == 1)
        started = time.monotonic()
        assert c.register(FakeWorker("pd-d-1", "decode", "local")) == 200
        waiter.join(10)
        # Granted when pd-d-1 joined, not when pd-d-0 ends or the 30 s queue wait expires.
        assert queued and queued[0].status_code == 200, queued
        assert queued[0].headers[ROUTE_HEADER].endswith("decode=pd-d-1")
        assert time.monotonic() - started < 5.0
        decode_loop = c.servers["pd-d-0"].loop
        assert decode_loop is not None
        decode_loop.call_soon_threadsafe(hold.set)
        held.join(10)


def test_a_worker_that_goes_away_is_routed_around() -> None:
    workers = [*fleet(), FakeWorker("pd-d-1", "decode", "local")]
    with fake_cluster(workers) as c:
        fleet_view = c.deployment.fleet
        fleet_view.heartbeat_timeout_s = 2.0  # ten beats: robust on a loaded machine
        c.stop("pd-d-0")  # its heartbeats stop; its port refuses
        wait_until(lambda: not fleet_view.healthy("pd-d-0"), 15.0)
        for prompt in (SHORT, LONG, SHORT):
            r = complete(c.url, prompt)
            assert r.status_code == 200, r.text
            assert r.headers[ROUTE_HEADER].endswith("decode=pd-d-1")


def test_no_healthy_decode_worker_is_503() -> None:
    with fake_cluster(fleet()) as c:
        fleet_view = c.deployment.fleet
        fleet_view.heartbeat_timeout_s = 2.0  # ten beats: robust on a loaded machine
        c.stop("pd-d-0")
        wait_until(lambda: not fleet_view.healthy("pd-d-0"), 15.0)
        r = complete(c.url, SHORT)
        assert r.status_code == 503 and "decode" in r.json()["error"]["message"]


def test_a_worker_with_another_block_size_is_refused_at_registration() -> None:
    with fake_cluster(fleet()) as c:
        odd = FakeWorker("pd-d-9", "decode", "local", block_size=32)
        status = c.register(odd)
        assert status == 409
        r = odd.register(c.url, c.token)
        assert "block" in r.json()["error"]["message"] and "16" in r.text
        assert "pd-d-9" not in c.deployment.fleet.workers


@pytest.mark.parametrize("where", ["prefill", "decode"])
def test_usage_reports_the_engines_prefix_hit_not_the_routers(where: str) -> None:
    """The router predicts no hit (an empty kv index); the instance that prefilled reports
    the hit its engine found, and that is what the API says."""
    with fake_cluster(fleet()) as c:
        # A real decode instance streams only once the KV (and so the prefill) is done.
        c.workers["pd-d-0"].behaviour.decode_delay_s = 0.3
        if where == "prefill":
            c.workers["prfaas-0"].behaviour.prefill_cached_tokens = 48
        else:  # the prefill failed and the decode instance prefilled the prompt itself
            c.workers["prfaas-0"].behaviour.prefill_ok = False
            c.workers["pd-d-0"].behaviour.decode_cached_tokens = 32
        routed = c.deployment.backend.route
        decisions: list[Any] = []

        def spy(*args: Any) -> Any:
            decisions.append(routed(*args))
            return decisions[-1]

        c.deployment.backend.route = spy  # type: ignore[method-assign]
        r = complete(c.url, LONG)
        assert r.status_code == 200, r.text
        assert decisions[0].cached_tokens == 0  # the router's prediction
        assert cached_tokens(r) == (48 if where == "prefill" else 32)
