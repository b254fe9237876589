"""The receiver's limits against hostile or broken peers, over real TCP: a slow-loris peer
is cut at the handshake deadline while a real transfer succeeds beside it, connections
beyond the cap are closed at accept (and counted), a TLS handshake is under the same
deadline, and a header above the per-transfer
budget (derived from the pool) is refused before anything is allocated."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from prfaas.transfer.config import ReceiverConfig
from prfaas.transfer.errors import ErrorCode
from prfaas.transfer.messages import ErrorMessage, Hello
from prfaas.transfer.receiver import KvReceiver
from prfaas.transfer.tls import PLAINTEXT, TlsConfig, server_context
from prfaas.transfer.wire import FrameType, frame_bytes, read_control_frame

from .conftest import FAST, FINGERPRINT, make_payload, make_sender


def _hello_frame(request_id: str) -> bytes:
    return frame_bytes(FrameType.HELLO, Hello(request_id, 0, 1, 0, False).encode())


def _is_closed(sock: socket.socket, timeout_s: float) -> bool:
    """True once the peer closed ``sock`` (EOF or reset) within ``timeout_s``."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slow_loris_is_cut_at_the_handshake_deadline_while_a_transfer_succeeds() -> None:
    config = ReceiverConfig(fingerprint=FINGERPRINT, deadlines=FAST, handshake_s=1.5)
    with KvReceiver(config, tls=PLAINTEXT) as rx:
        hello = _hello_frame("loris")
        loris = socket.create_connection(rx.address, timeout=5)
        connected_s = time.monotonic()
        stop = threading.Event()

        def trickle() -> None:  # one byte a second: every read succeeds, no stall fires
            for byte in hello[:-1]:
                if stop.wait(1.0):
                    return
                try:
                    loris.sendall(bytes([byte]))
                except OSError:
                    return

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        header, arrays = make_payload(request_id="real")  # meanwhile, a real transfer lands
        make_sender().send(rx.address, header, arrays)
        assert rx.wait("real", timeout_s=5).header == header
        rx.release("real")
        while (rx.handshake_timeouts == 0 or rx.num_connections) and time.monotonic() < (
            connected_s + 5
        ):
            time.sleep(0.01)
        cut_after_s = time.monotonic() - connected_s
        stop.set()
        thread.join(5)
        loris.close()
        assert rx.handshake_timeouts == 1 and rx.num_connections == 0
        assert cut_after_s < 1.5 + 1.0, cut_after_s  # the deadline, an accept poll, slack
        assert rx.allocated_bytes == 0 and rx.num_transfers == 0


def test_connections_beyond_the_cap_are_refused_and_counted() -> None:
    config = ReceiverConfig(fingerprint=FINGERPRINT, deadlines=FAST, max_connections=2)
    with KvReceiver(config, tls=PLAINTEXT) as rx:
        held = [socket.create_connection(rx.address, timeout=5) for _ in range(2)]
        deadline_s = time.monotonic() + 2
        while rx.num_connections < 2 and time.monotonic() < deadline_s:
            time.sleep(0.01)
        extra = socket.create_connection(rx.address, timeout=5)
        assert _is_closed(extra, 2.0)  # closed at accept: no thread, nothing read
        assert rx.refused_connections == 1 and rx.num_connections == 2
        for sock in (*held, extra):
            sock.close()
        deadline_s = time.monotonic() + 3
        while rx.num_connections and time.monotonic() < deadline_s:
            time.sleep(0.01)
        header, arrays = make_payload(request_id="after", num_linear=0)
        make_sender(connections=2).send(rx.address, header, arrays)  # room again
        rx.wait("after", timeout_s=5)
        rx.release("after")


def test_header_above_the_pool_budget_is_refused_before_allocation() -> None:
    header, _ = make_payload(num_full=2, num_linear=0)
    per_transfer, total = ReceiverConfig.pool_budgets(header.raw_bytes - 1)
    config = ReceiverConfig(
        fingerprint=FINGERPRINT,
        deadlines=FAST,
        max_transfer_bytes=per_transfer,
        max_total_bytes=total,
    )
    assert config.max_transfer_bytes == header.raw_bytes - 1
    with KvReceiver(config, tls=PLAINTEXT) as rx, socket.create_connection(rx.address, 5) as s:
        s.sendall(_hello_frame(header.request_id) + frame_bytes(FrameType.HEADER, header.encode()))
        frame_type, payload = read_control_frame(s, FrameType.READY)
        assert frame_type == FrameType.ERROR
        message = ErrorMessage.decode(payload)
        assert message.code == ErrorCode.REFUSED and "max_transfer_bytes" in message.message
        assert rx.allocated_bytes == 0 and rx.num_transfers == 0


def test_the_total_budget_follows_the_pool_not_two_longest_requests() -> None:
    # A small context over a larger pool: many shorter landings fit at once.
    per_transfer, total = ReceiverConfig.pool_budgets(2 << 20, pool_bytes=64 << 20)
    assert per_transfer == 2 << 20
    assert total >= 64 << 20 and total // per_transfer >= 30
    # A pool smaller than two longest requests: still room for two of them.
    long_one, total = ReceiverConfig.pool_budgets(8 << 20, pool_bytes=1 << 20)
    assert total == 2 * long_one


def test_pool_budgets_are_validated() -> None:
    with pytest.raises(ValueError):
        ReceiverConfig.pool_budgets(0)
    with pytest.raises(ValueError):
        ReceiverConfig(max_connections=0)
    with pytest.raises(ValueError):
        ReceiverConfig(handshake_s=0)


def test_a_tls_handshake_trickled_byte_by_byte_is_cut(certs_dir: Path) -> None:
    """The deadline counts the TLS handshake too: a ClientHello record header sent a byte
    every 0.4 s keeps each read alive, and still the connection is cut at the deadline."""
    config = ReceiverConfig(fingerprint=FINGERPRINT, deadlines=FAST, handshake_s=1.0)
    tls = server_context(TlsConfig.from_dir(certs_dir, "pd"))
    with KvReceiver(config, tls=tls) as rx, socket.create_connection(rx.address, 5) as peer:
        start_s = time.monotonic()
        for byte in b"\x16\x03\x01\x02\x00\x01":  # handshake record, 512 bytes announced
            try:
                peer.sendall(bytes([byte]))
            except OSError:
                break
            if rx.handshake_timeouts:
                break
            time.sleep(0.4)
        while rx.num_connections and time.monotonic() - start_s < 5:
            time.sleep(0.01)
        assert rx.handshake_timeouts == 1 and rx.num_connections == 0
        assert time.monotonic() - start_s < 1.0 + 1.0
