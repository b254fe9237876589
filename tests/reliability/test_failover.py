"""Decode failover against real processes (issue #13): `prfaas serve` with two decode
instances. The one serving a streamed greedy completion is stopped (SIGSTOP) mid-stream; its
heartbeats stop, the gateway resumes the request at the other decode instance (which
prefills the prompt and the tokens streamed so far) and the official client's stream
completes with exactly the text of an uninterrupted run. Once the stopped worker resumes
(SIGCONT) it sees the gateway hung up, and every pool is clean."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prfaas.deploy.launcher import free_port
from tests.reliability.conftest import (
    Serve,
    assert_clean,
    serve_config,
    start_serve,
    worker_check,
)

HEARTBEAT_TIMEOUT_S = 3.0  # the gateway fleet's default
DECODERS = ("pd-d-0", "pd-d-1")


@pytest.fixture(scope="module")
def two_decoders(drill_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    cfg = serve_config(drill_model, free_port())
    cfg["clusters"][0]["instances"].append({"name": "pd-d-1", "role": "decode", "spawn": True})
    s = start_serve(tmp_path_factory.mktemp("failover"), cfg)
    try:
        yield s
    finally:
        s.stop()


def stream(serve: Serve, on_first: object = None) -> str:
    chunks = serve.long_stream(300)
    texts = []
    for chunk in chunks:
        if not texts and callable(on_first):
            on_first()
        texts.append(chunk.choices[0].text)
    return "".join(texts)


def serving_decoder(serve: Serve) -> str:
    counted = {i["name"]: i["inflight"] for i in serve.status()["instances"]}
    (name,) = [n for n in DECODERS if counted.get(n)]
    return name


def test_a_stopped_decode_worker_fails_over_and_the_text_is_unchanged(
    two_decoders: Serve,
) -> None:
    serve = two_decoders
    urls = {i["name"]: i["http_url"] for i in serve.status()["instances"]}
    uninterrupted = stream(serve)
    stopped: list[tuple[int, float]] = []

    def stop_its_decoder() -> None:
        victim = worker_check(urls[serving_decoder(serve)])
        os.kill(victim.pid, signal.SIGSTOP)
        stopped.append((victim.pid, time.monotonic()))

    try:
        resumed = stream(serve, on_first=stop_its_decoder)
        took_s = time.monotonic() - stopped[0][1]
    finally:
        for pid, _ in stopped:
            os.kill(pid, signal.SIGCONT)
    assert resumed == uninterrupted
    # It was resumed, not just drained from buffers the stopped worker had filled.
    log = (serve.tmp / "serve.out").read_text()
    assert "stalled mid-stream: its heartbeats stopped; resumed at" in log
    assert took_s < HEARTBEAT_TIMEOUT_S + 30.0, took_s  # resumed, not waited out
    serve.wait_healthy(list(DECODERS))
    assert_clean(urls)
    serve.assert_idle()
