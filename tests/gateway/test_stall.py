"""No hang on a silent decode worker (issue #13): the gateway reads every decode stream under
a deadline. A fake decode worker (``tests/fakes``) goes silent mid-stream, either still
heartbeating (a stuck step: the stall deadline ends it) or not (a wedged process or a silent
partition: the fleet's missed heartbeats end it sooner). The client gets an OpenAI error
event then ``[DONE]`` (streamed) or a 502 (whole), the admission slot comes back, and the
gateway hangs up on the worker (its abort when it comes back)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from prfaas.dispatch.stall import WorkerStalled, watched
from tests.fakes.cluster import FakeCluster, fake_cluster
from tests.gateway.test_dispatch import SHORT, complete, fleet, wait_until

BOUND_S = 2.0  # past the deadline that fires, the request ends within this


def stream_until_silent(c: FakeCluster, on_first: object = None) -> tuple[list[str], float]:
    """Stream a request whose decode worker stalls after two events: its SSE data lines
    and the seconds from the first line to the end."""
    body = {"model": "fake", "prompt": SHORT, "max_tokens": 8, "stream": True}
    lines: list[str] = []
    with httpx.stream("POST", c.url + "/v1/completions", json=body, timeout=30.0) as r:
        assert r.status_code == 200
        started = 0.0
        for line in r.iter_lines():
            if line.startswith("data: "):
                if not lines:
                    started = time.monotonic()
                    if callable(on_first):
                        on_first()
                lines.append(line[6:])
    return lines, time.monotonic() - started


def assert_ended_with_error(c: FakeCluster, lines: list[str]) -> None:
    assert lines[-1] == "[DONE]"
    error = json.loads(lines[-2])["error"]
    assert error["type"] == "server_error" and "generation failed" in error["message"]
    assert "".join(json.loads(x)["choices"][0]["text"] for x in lines[:-2]) == " w3 w4"
    admission = c.deployment.app.state.admission
    wait_until(lambda: admission.in_flight == 0 and not admission.by_instance)
    decode = c.workers["pd-d-0"].received
    wait_until(lambda: len(decode.abandoned) == len(decode.decodes))


def test_a_stream_silent_past_the_stall_deadline_ends_with_an_error() -> None:
    with fake_cluster(fleet(), stream_stall_s=1.0, kv_deadline_s=0.5) as c:
        c.workers["pd-d-0"].behaviour.stall_after = 2  # its heartbeats go on: a stuck step
        lines, elapsed_s = stream_until_silent(c)
        assert 0.5 < elapsed_s < 1.0 + BOUND_S, elapsed_s  # from the client's first line
        assert_ended_with_error(c, lines)
        started = time.monotonic()
        whole = complete(c.url, SHORT, max_tokens=8)
        assert whole.status_code == 502 and whole.json()["error"]["type"] == "server_error"
        assert 1.0 <= time.monotonic() - started < 1.0 + BOUND_S
        assert_ended_with_error(c, lines)
        c.workers["pd-d-0"].behaviour.stall_after = None
        assert complete(c.url, SHORT).status_code == 200


def test_a_decode_worker_whose_heartbeats_stop_ends_its_streams_early() -> None:
    # The only decode instance: nowhere to fail over to (``test_failover.py``).
    with fake_cluster(fleet(), stream_stall_s=60.0) as c:
        fleet_view = c.deployment.fleet
        fleet_view.heartbeat_timeout_s = 2.0  # ten beats: robust on a loaded machine
        wedged = c.workers["pd-d-0"].behaviour
        wedged.stall_after = 2

        def wedge() -> None:
            wedged.heartbeats = False

        lines, elapsed_s = stream_until_silent(c, on_first=wedge)
        assert elapsed_s < fleet_view.heartbeat_timeout_s + BOUND_S, elapsed_s
        assert_ended_with_error(c, lines)
        assert "pd-d-0" in c.deployment.backend.fleet.workers  # still registered, unhealthy


async def _source(n: int, gap_s: float = 0.0) -> AsyncIterator[bytes]:
    for i in range(n):
        await asyncio.sleep(gap_s)
        yield b"%d" % i
    await asyncio.Event().wait()  # then silent, never ending


def test_only_time_spent_waiting_on_the_worker_counts() -> None:
    async def run() -> tuple[list[bytes], float]:
        got: list[bytes] = []
        started = time.monotonic()
        with pytest.raises(WorkerStalled, match=r"nothing for 0\.3 s"):
            async for chunk in watched(_source(3, 0.1), "d", 0.3, lambda: True):
                got.append(chunk)
                await asyncio.sleep(0.5)  # a slow client: longer than the deadline, not cut
        return got, time.monotonic() - started

    got, elapsed_s = asyncio.run(run())
    assert got == [b"0", b"1", b"2"]
    assert 1.5 + 0.3 <= elapsed_s < 1.5 + 0.3 + 1.5, elapsed_s


def test_a_worker_marked_unhealthy_ends_the_wait_and_outside_cancels_pass_through() -> None:
    async def run() -> None:
        health = [True]
        stream = watched(_source(1), "d", 60.0, lambda: health[0])
        assert await anext(stream) == b"0"
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, health.__setitem__, 0, False)
        with pytest.raises(WorkerStalled, match="heartbeats stopped"):
            await asyncio.wait_for(anext(stream), 2.0)
        other = watched(_source(0), "d", 60.0, lambda: True)
        with pytest.raises(TimeoutError):  # the caller's own cancel is not a stall
            await asyncio.wait_for(anext(other), 0.3)
        await other.aclose()

    asyncio.run(run())
