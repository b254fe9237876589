"""Link monitor: goodput, RTT and retransmissions per link, for the router and the logs.

Goodput is measured three ways: a sliding one-second window over bytes handed to the kernel
(what the link carries now), per transfer while it was backlogged, and continuously while
the link was backlogged (``capacity.CapacityEstimator``: what the link can carry now, and
how much of the time it had a backlog; a stalled link is busy, never idle). Backlogged means
KV bytes wait to be written; and a transfer's acknowledgement that comes later than the
path's fixed latency counts that excess as busy time too (its bytes sat in buffers on the
way), so that buffers in front of a slow link do not read as capacity. Only the
backlogged ones are compared with the configured cap, because an idle or compute-bound
sender is not a slow link. RTT and retransmissions come from TCP_INFO. Bytes
are counted as each paced grant leaves (transfers in flight included), with the transfers
open and the KV bytes queued for the link but not yet written.

The sender's monitor is the one measurement of a link's egress: a prefill worker reports
it in every heartbeat (``messages.LinkReport``) and everyone else reads that.
"""

from __future__ import annotations

import collections
import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass

from prfaas.transfer.capacity import CapacityEstimator

logger = logging.getLogger(__name__)
# A transfer says something about the link only above these: 1 MiB busy for 5 ms is still
# far above the clock's resolution and a few pacing grants.
MIN_BUSY_S = 0.005
MIN_WIRE_BYTES = 1 << 20
ACK_WAITS = 64  # transfers whose least acknowledgement wait is taken as the fixed latency

# struct tcp_info (linux/tcp.h): 8 single-byte fields, then u32s; we read up to total_retrans.
_TCP_INFO = struct.Struct("<8B24I")
_RTT_US, _RTTVAR_US, _SND_CWND, _TOTAL_RETRANS = 15, 16, 18, 23  # indexes into the u32s


@dataclass(frozen=True)
class TcpInfo:
    rtt_ms: float
    rttvar_ms: float
    snd_cwnd: int  # segments
    total_retrans: int  # segments retransmitted over the connection's life


def tcp_info(sock: socket.socket) -> TcpInfo | None:
    """TCP_INFO of a connected socket (plain or TLS); None where the platform has none."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    except (AttributeError, OSError):
        return None
    if len(raw) < _TCP_INFO.size:
        return None
    words = _TCP_INFO.unpack(raw)[8:]
    return TcpInfo(
        rtt_ms=words[_RTT_US] / 1000,
        rttvar_ms=words[_RTTVAR_US] / 1000,
        snd_cwnd=words[_SND_CWND],
        total_retrans=words[_TOTAL_RETRANS],
    )


@dataclass(frozen=True)
class LinkStats:
    """What the router reads about a link."""

    name: str
    rate_cap_gbps: float | None
    goodput_gbps: float  # wire bits/s over the last second
    backlogged_goodput_gbps: float | None  # last transfer that kept the link busy
    rtt_ms: float | None
    retransmits: int  # summed over finished connections
    bytes_sent: int  # wire bytes, counted as they go (transfers in flight included)
    transfers_ok: int
    transfers_failed: int
    transfers_open: int = 0
    backlog_bytes: int = 0  # KV bytes given to open transfers, not yet written
    capacity_gbps: float | None = None  # goodput while backlogged, at most the cap; None: unknown
    busy_fraction: float = 0.0  # share of the last window with a backlog


class LinkMonitor:
    WINDOW_S = 1.0

    def __init__(self, name: str, warn_fraction: float = 0.5) -> None:
        self.name = name
        self.warn_fraction = warn_fraction
        self._lock = threading.Lock()
        self._bytes_sent = 0
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._backlogged_gbps: float | None = None
        self._rtt_ms: float | None = None
        self._retransmits = 0
        self._ok = 0
        self._failed = 0
        self._open = 0
        self._backlog = 0
        self._ack_waits: collections.deque[float] = collections.deque(maxlen=ACK_WAITS)
        self._capacity = CapacityEstimator()

    def record_opened(self) -> None:
        """A transfer opened; ``record_transfer`` closes it."""
        with self._lock:
            self._open += 1

    def record_backlog(self, delta_bytes: int) -> None:
        """KV bytes queued for the link (> 0) or written or dropped (< 0)."""
        with self._lock:
            self._backlog += delta_bytes
            self._capacity.update(time.monotonic(), self._bytes_sent, self._backlog > 0)

    def record_ack_wait(self, wait_s: float) -> None:
        """A transfer wrote its last byte and got its acknowledgement ``wait_s`` later. The
        least such wait lately is the path's fixed latency (RTT, the receiver's landing);
        anything beyond it was spent delivering bytes still in buffers on the way (socket
        buffers, a bottleneck's queue): the link was busy for that long, though the sender
        no longer had a backlog."""
        with self._lock:
            self._ack_waits.append(wait_s)
            excess_s = wait_s - min(self._ack_waits)
            if excess_s > 0:
                self._capacity.add_busy(excess_s)

    def record_sent(self, num_bytes: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._bytes_sent += num_bytes
            if not self._samples or now - self._samples[-1][0] >= 0.01:
                self._samples.append((now, self._bytes_sent))
            while len(self._samples) > 2 and now - self._samples[1][0] > self.WINDOW_S:
                self._samples.popleft()
            self._capacity.update(now, self._bytes_sent, self._backlog > 0)

    def record_connection(self, info: TcpInfo | None) -> None:
        """Called once per connection before it closes."""
        if info is None:
            return
        with self._lock:
            self._rtt_ms = info.rtt_ms
            self._retransmits += info.total_retrans

    def record_transfer(
        self, ok: bool, wire_bytes: int, busy_s: float, rate_cap_gbps: float | None
    ) -> None:
        """Once per opened transfer, at its end. ``busy_s``: time the transfer had data
        waiting to be sent (backlogged)."""
        with self._lock:
            self._open = max(0, self._open - 1)
            if not ok:
                self._failed += 1
                return
            self._ok += 1
            if busy_s < MIN_BUSY_S or wire_bytes < MIN_WIRE_BYTES:
                return  # too small to say anything about the link
            goodput_gbps = wire_bytes * 8 / busy_s / 1e9
            self._backlogged_gbps = goodput_gbps
        if rate_cap_gbps and goodput_gbps < self.warn_fraction * rate_cap_gbps:
            logger.warning(
                "link %s: backlogged goodput %.3f Gbit/s is below %.0f%% of its %.3f Gbit/s cap",
                self.name,
                goodput_gbps,
                self.warn_fraction * 100,
                rate_cap_gbps,
            )

    def stats(self, rate_cap_gbps: float | None) -> LinkStats:
        now = time.monotonic()
        with self._lock:
            self._capacity.update(now, self._bytes_sent, self._backlog > 0)
            estimate = self._capacity.estimate(now, rate_cap_gbps)
            goodput = 0.0
            if self._samples and now - self._samples[-1][0] < self.WINDOW_S:
                t0, b0 = self._samples[0]
                span_s = max(now - t0, 1e-3)
                goodput = (self._bytes_sent - b0) * 8 / span_s / 1e9
            return LinkStats(
                name=self.name,
                rate_cap_gbps=rate_cap_gbps,
                goodput_gbps=goodput,
                backlogged_goodput_gbps=self._backlogged_gbps,
                rtt_ms=self._rtt_ms,
                retransmits=self._retransmits,
                bytes_sent=self._bytes_sent,
                transfers_ok=self._ok,
                transfers_failed=self._failed,
                transfers_open=self._open,
                backlog_bytes=max(0, self._backlog),
                capacity_gbps=estimate.capacity_gbps,
                busy_fraction=estimate.busy_fraction,
            )
