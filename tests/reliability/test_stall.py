"""No hang on a wedged decode worker (issue #13), against real processes: `prfaas serve`
with its one decode instance stopped (SIGSTOP) mid-stream. Its heartbeats stop, and the
gateway ends the client's stream with an error within the heartbeat timeout plus 2 s, rather
than leaving it open until the client gives up. Once the worker resumes (SIGCONT) it sees the
gateway hung up, aborts the request, holds nothing, and serves the next request."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import openai
import pytest

from tests.reliability.conftest import MODEL, SHORT, Serve, assert_clean, worker_check

HEARTBEAT_TIMEOUT_S = 3.0  # the gateway fleet's default
BOUND_S = HEARTBEAT_TIMEOUT_S + 2.0


def test_a_stopped_decode_worker_ends_its_stream_within_the_heartbeat_timeout(
    serve: Serve, reference: Callable[[str, int], str]
) -> None:
    urls = {i["name"]: i["http_url"] for i in serve.status()["instances"]}
    victim = worker_check(urls["pd-d-0"])
    stream = serve.long_stream(400)
    chunks = iter(stream)
    next(chunks)  # decoding has begun
    os.kill(victim.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        with pytest.raises(openai.APIError):  # the SSE error event, not a truncated answer
            for _ in chunks:
                pass
        ended_s = time.monotonic() - stopped
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    assert ended_s < BOUND_S, ended_s
    serve.wait_healthy(["pd-d-0"])  # the same process, heartbeating again
    assert_clean(urls)
    serve.assert_idle()
    answer = serve.client().completions.create(
        model=MODEL, prompt=SHORT, max_tokens=8, temperature=0
    )
    assert answer.choices[0].text == reference(SHORT, 8)
    assert_clean(urls)
