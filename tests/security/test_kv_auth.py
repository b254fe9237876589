"""KV streams accept only peers that hold the cluster token: without TLS, a sender proves the
derived KV key in an AUTH frame after HELLO; no key, a wrong key, a replayed or stale AUTH are
refused before anything is read beyond it or reserved, and the receiver holds nothing after."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import numpy as np
import pytest

from prfaas.transfer.auth import AuthProof, _tag, kv_auth_key
from prfaas.transfer.config import LinkConfig, ReceiverConfig
from prfaas.transfer.errors import PeerGone, TransferRefused
from prfaas.transfer.link import Link
from prfaas.transfer.messages import ErrorMessage, Hello
from prfaas.transfer.receiver import KvReceiver
from prfaas.transfer.sender import KvSender
from prfaas.transfer.tls import PLAINTEXT
from prfaas.transfer.wire import FrameType, frame_bytes, read_control_frame
from tests.transfer.conftest import FAST, FINGERPRINT, make_payload

KEY = kv_auth_key("cluster-token")


@pytest.fixture
def receiver() -> Iterator[KvReceiver]:
    config = ReceiverConfig(
        fingerprint=FINGERPRINT, deadlines=FAST, resume_window_s=0, auth_key=KEY
    )
    with KvReceiver(config, tls=PLAINTEXT) as rx:
        yield rx


def sender(auth_key: bytes | None) -> KvSender:
    link = Link(LinkConfig("auth", connections=2, chunk_bytes=64 << 10))
    return KvSender(link, tls=PLAINTEXT, deadlines=FAST, auth_key=auth_key)


def assert_clean(rx: KvReceiver) -> None:
    assert rx.num_transfers == 0 and rx.allocated_bytes == 0


def test_sender_with_the_key_is_accepted(receiver: KvReceiver) -> None:
    header, arrays = make_payload()
    sender(KEY).send(receiver.address, header, arrays)
    got = receiver.wait(header.request_id, 5)
    assert all(np.array_equal(g, a) for g, a in zip(got.layers, arrays, strict=True))
    receiver.release(header.request_id)
    assert_clean(receiver)


@pytest.mark.parametrize("key", [None, kv_auth_key("another-token")], ids=["no key", "wrong key"])
def test_sender_without_the_key_is_refused(receiver: KvReceiver, key: bytes | None) -> None:
    header, arrays = make_payload()
    with pytest.raises((TransferRefused, PeerGone)):
        sender(key).send(receiver.address, header, arrays)
    with pytest.raises(Exception):  # noqa: B017 (nothing to wait for: it never landed)
        receiver.wait(header.request_id, 0.2)
    assert_clean(receiver)


def raw_attempt(rx: KvReceiver, hello: Hello, auth: bytes | None) -> ErrorMessage:
    """A hand-made peer: HELLO, optionally AUTH, then a HEADER; returns the receiver's ERROR."""
    header, _ = make_payload(request_id=hello.request_id)
    with socket.create_connection(rx.address, timeout=2.0) as sock:
        sock.sendall(frame_bytes(FrameType.HELLO, hello.encode()))
        if auth is not None:
            sock.sendall(frame_bytes(FrameType.AUTH, auth))
        sock.sendall(frame_bytes(FrameType.HEADER, header.encode()))
        frame_type, payload = read_control_frame(sock, FrameType.READY)
    assert frame_type == FrameType.ERROR
    return ErrorMessage.decode(payload)


def test_a_peer_skipping_auth_gets_an_error_and_nothing_is_reserved(
    receiver: KvReceiver,
) -> None:
    error = raw_attempt(receiver, Hello("req-raw", 0, 1, 0, False), None)
    assert "not authenticated" in error.message
    assert_clean(receiver)


def test_replayed_auth_is_refused(receiver: KvReceiver) -> None:
    hello = Hello("req-replay", 0, 1, 0, False)
    proof = AuthProof.prove(KEY, hello.encode()).encode()
    # The first use is accepted (the receiver answers READY, then we vanish) ...
    header, _ = make_payload(request_id=hello.request_id)
    with socket.create_connection(receiver.address, timeout=2.0) as sock:
        sock.sendall(frame_bytes(FrameType.HELLO, hello.encode()))
        sock.sendall(frame_bytes(FrameType.AUTH, proof))
        sock.sendall(frame_bytes(FrameType.HEADER, header.encode()))
        assert read_control_frame(sock, FrameType.READY)[0] == FrameType.READY
    # ... the same bytes again are not.
    assert "replayed" in raw_attempt(receiver, hello, proof).message


def test_stale_or_forged_auth_is_refused(receiver: KvReceiver) -> None:
    hello = Hello("req-stale", 0, 1, 0, False)
    nonce, old_ms = bytes(16), 1_000_000
    stale = struct.pack("<Q16s32s", old_ms, nonce, _tag(KEY, hello.encode(), old_ms, nonce))
    assert "window" in raw_attempt(receiver, hello, stale).message
    # A tag for another HELLO (another request id) does not open this one.
    other = AuthProof.prove(KEY, Hello("req-other", 0, 1, 0, False).encode()).encode()
    assert "wrong KV key" in raw_attempt(receiver, hello, other).message
    assert "AUTH payload" in raw_attempt(receiver, hello, b"\0" * 40).message
    assert_clean(receiver)
