"""The link emulator (rate cap, added RTT) and the link monitor (TCP_INFO, goodput warning)."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from prfaas.transfer.emulator import EmulatorConfig, LinkEmulator
from prfaas.transfer.monitor import LinkMonitor, tcp_info
from prfaas.transfer.receiver import KvReceiver

from .conftest import make_payload, make_sender


def test_emulator_adds_rtt(receiver: KvReceiver) -> None:
    header, arrays = make_payload(num_full=1, num_linear=0)
    config = EmulatorConfig(("127.0.0.1", 0), receiver.address, rtt_ms=60.0, jitter_ms=10.0)
    with LinkEmulator(config) as emulator:
        start_s = time.monotonic()
        transfer = make_sender(connections=1).open(emulator.address, header)
        ready_s = time.monotonic() - start_s  # HELLO+HEADER there, READY back: one RTT
        transfer.send_layer(0, arrays[0])
        transfer.finish()
    assert 0.06 <= ready_s < 0.5
    receiver.release(header.request_id)


def test_emulator_caps_the_rate_and_the_monitor_warns(
    receiver: KvReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The sender is told the link has 1 Gbit/s; the emulated path gives 0.1 Gbit/s."""
    header, arrays = make_payload(num_full=12, num_blocks=128, num_linear=0)  # 12 MiB
    config = EmulatorConfig(("127.0.0.1", 0), receiver.address, rate_gbps=0.1)
    with LinkEmulator(config) as emulator, caplog.at_level(logging.WARNING):
        sender = make_sender(connections=2, rate_gbps=1.0)
        stats = sender.send(emulator.address, header, arrays)
    assert 0.07 <= stats.goodput_gbps <= 0.11, stats.goodput_gbps  # the emulator's cap binds
    link = sender.link.stats()
    assert link.backlogged_goodput_gbps is not None and link.backlogged_goodput_gbps < 0.5
    assert any("below" in r.getMessage() for r in caplog.records)
    receiver.release(header.request_id)


def test_emulator_cut_closes_connections() -> None:
    with socket.create_server(("127.0.0.1", 0)) as target:
        config = EmulatorConfig(("127.0.0.1", 0), target.getsockname())
        with LinkEmulator(config) as emulator:
            client = socket.create_connection(emulator.address, timeout=2)
            server, _ = target.accept()
            client.sendall(b"ping")
            assert server.recv(4) == b"ping"
            emulator.cut()
            server.settimeout(2)
            assert server.recv(4) == b""
            client.close()
            server.close()


def test_tcp_info_reads_rtt_and_retransmissions() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        client.sendall(b"x" * 1000)
        peer.recv(1000)
        info = tcp_info(client)
        client.close()
        peer.close()
    assert info is not None
    assert 0 < info.rtt_ms < 100 and info.total_retrans == 0 and info.snd_cwnd > 0


def test_monitor_window_goodput() -> None:
    monitor = LinkMonitor("m")
    for _ in range(10):
        monitor.record_sent(1_000_000)
        time.sleep(0.011)
    stats = monitor.stats(rate_cap_gbps=None)
    assert stats.bytes_sent == 10_000_000
    assert 0.2 < stats.goodput_gbps < 2.0  # ~10 MB in ~0.1 s


def test_monitor_counts_a_transfer_while_it_is_in_flight(receiver: KvReceiver) -> None:
    """Bytes on the wire, the open transfer and its backlog show before the ACK, not only
    at completion (what a prefill worker's heartbeat reports mid-transfer)."""
    header, arrays = make_payload(num_full=6, num_linear=0, num_blocks=24)  # ~1.2 MB
    sender = make_sender(connections=1, rate_gbps=0.02)  # ~2.5 MB/s: about half a second
    monitor = sender.link.monitor
    transfer = sender.open(receiver.address, header)
    for i, array in enumerate(arrays):
        transfer.send_layer(i, array)
    time.sleep(0.15)
    during = sender.link.stats()
    stats = transfer.finish()
    after = monitor.stats(rate_cap_gbps=None)
    assert during.transfers_open == 1
    assert 0 < during.bytes_sent < stats.wire_bytes
    assert 0 < during.backlog_bytes < header.raw_bytes
    assert (after.transfers_open, after.backlog_bytes) == (0, 0)
    assert after.bytes_sent == stats.wire_bytes and after.transfers_ok == 1
    receiver.release(header.request_id)


def test_emulator_blackhole_accepts_and_forwards_nothing_until_cleared() -> None:
    with socket.create_server(("127.0.0.1", 0)) as target:
        config = EmulatorConfig(("127.0.0.1", 0), target.getsockname())
        with LinkEmulator(config) as emulator:
            emulator.blackhole(True)
            client = socket.create_connection(emulator.address, timeout=2)  # accepted
            client.sendall(b"ping")
            target.settimeout(2)
            server, _ = target.accept()
            server.settimeout(0.5)
            with pytest.raises(TimeoutError):
                server.recv(4)  # nothing forwarded
            emulator.blackhole(False)
            server.settimeout(2)
            assert server.recv(4) == b"ping"
            client.close()
            server.close()
