"""Slow clients cannot hold the gateway's resources for ever (issue #13), over real TCP to the
real gateway (fake workers behind it, ``tests/fakes``):

- a slow-loris body (headers, then a trickle) gets 408 once ``body_timeout_s`` has passed;
- a streaming client that stops reading is cut once one write has waited
  ``stream_write_timeout_s``: its admission slot comes back and the decode worker's stream
  is closed (the worker aborts the request and frees its blocks).
"""

from __future__ import annotations

import json
import select
import socket
import time
from urllib.parse import urlparse

from tests.fakes.cluster import FakeCluster, fake_cluster
from tests.gateway.test_dispatch import SHORT, complete, fleet, wait_until

LIMITS = {"body_timeout_s": 1.0, "stream_write_timeout_s": 1.0}


def connect(c: FakeCluster, rcvbuf: int | None = None) -> socket.socket:
    url = urlparse(c.url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # a small window: the gateway's writes block sooner
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10.0)
    sock.connect((url.hostname, url.port))
    return sock


def request_head(c: FakeCluster, body_len: int) -> bytes:
    host = urlparse(c.url).netloc
    return (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {body_len}\r\n\r\n"
    ).encode()


def test_a_body_trickling_in_is_refused_after_the_body_timeout() -> None:
    with fake_cluster(fleet(), overload=LIMITS) as c, connect(c) as sock:
        body = json.dumps({"model": "fake", "prompt": SHORT, "max_tokens": 4}).encode()
        sock.sendall(request_head(c, len(body)) + body[:10])
        started = time.monotonic()
        for piece in body[10:20]:  # one byte per 0.3 s: still sending at the deadline
            if select.select([sock], [], [], 0.3)[0]:
                break  # the gateway answered
            sock.sendall(bytes([piece]))
        got = b""
        sock.settimeout(5.0)
        while b"\r\n\r\n" not in got:
            got += sock.recv(65536)
        elapsed_s = time.monotonic() - started
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        assert 1.0 <= elapsed_s < 1.0 + 2.0, elapsed_s
        assert c.workers["pd-d-0"].received.decodes == []  # nothing was admitted or sent
        assert complete(c.url, SHORT).status_code == 200  # the gateway serves on


def test_a_reader_that_stops_reading_is_cut_and_its_slot_and_stream_freed() -> None:
    with fake_cluster(fleet(), overload=LIMITS) as c:
        decode = c.workers["pd-d-0"]
        decode.behaviour.tokens = 400
        decode.behaviour.text_padding = 32 * 1024  # 400 chunks of 32 KiB: more than buffers
        decode.behaviour.token_gap_s = 0.01  # still decoding when the gateway hangs up
        body = json.dumps(
            {"model": "fake", "prompt": SHORT, "max_tokens": 400, "stream": True}
        ).encode()
        admission = c.deployment.app.state.admission
        with connect(c, rcvbuf=4096) as sock:
            sock.sendall(request_head(c, len(body)) + body)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            # ... and read nothing more, keeping the connection open.
            started = time.monotonic()
            wait_until(lambda: admission.in_flight == 0, timeout_s=15.0)
            cut_s = time.monotonic() - started
            wait_until(lambda: decode.received.abandoned == [decode.received.decodes[0].request_id])
        assert cut_s < 15.0
        assert complete(c.url, SHORT).status_code == 200
