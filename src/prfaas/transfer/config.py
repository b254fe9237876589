"""Frozen configuration of the transport: deadlines, links, sender and receiver."""

from __future__ import annotations

from dataclasses import dataclass, field

from prfaas.transfer.codecs import CodecSpec
from prfaas.transfer.wire import MAX_CHUNK_FRAME_BYTES, MAX_CONNECTIONS


@dataclass(frozen=True)
class Deadlines:
    """Every transfer has all three; each one fires as TransferTimeout."""

    first_byte_s: float = 10.0  # connect + handshake + header answered (sender); HELLO (receiver)
    stall_s: float = 10.0  # longest time a connection may make no progress
    total_s: float = 300.0  # open to acknowledged

    def __post_init__(self) -> None:
        if min(self.first_byte_s, self.stall_s, self.total_s) <= 0:
            raise ValueError(f"deadlines must be positive: {self}")


@dataclass(frozen=True)
class LinkConfig:
    """One link between two clusters, as the sender sees it."""

    name: str = "default"
    rate_gbps: float | None = None  # egress cap shared by all transfers; None = uncapped
    connections: int = 4  # TCP connections per transfer, chunks striped across them
    codec: str = "raw"  # see CodecSpec; compress only where the link is the bottleneck
    chunk_bytes: int = 4 << 20  # target raw bytes per CHUNK frame (whole blocks)
    warn_fraction: float = 0.5  # log when backlogged goodput < this share of the cap

    def __post_init__(self) -> None:
        if not 1 <= self.connections <= MAX_CONNECTIONS:
            raise ValueError(f"connections must be in 1..{MAX_CONNECTIONS}")
        if self.rate_gbps is not None and self.rate_gbps <= 0:
            raise ValueError("rate_gbps must be positive or None")
        if not 1 <= self.chunk_bytes <= MAX_CHUNK_FRAME_BYTES // 2:
            raise ValueError(f"chunk_bytes must be in 1..{MAX_CHUNK_FRAME_BYTES // 2}")
        CodecSpec.parse(self.codec)


@dataclass(frozen=True)
class ReceiverConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port (see KvReceiver.address)
    fingerprint: bytes | None = None  # the model this receiver serves; None accepts any
    deadlines: Deadlines = field(default_factory=Deadlines)
    # Byte budgets; an engine derives them from its KV pool (``for_pool``).
    max_transfer_bytes: int = 32 << 30  # one transfer's decoded size
    max_total_bytes: int = 64 << 30  # all transfers held at once (landing + unreleased)
    max_connections: int = 256  # open connections; one beyond is closed at accept, counted
    handshake_s: float = 10.0  # TLS handshake + HELLO + AUTH, in total, per connection
    resume_window_s: float = 10.0  # how long a cut transfer keeps its complete layers
    pool_bytes: int = 4 << 30  # freed receive buffers kept for reuse (no page faults)
    # kv_auth_key(cluster token): every connection must prove it (AUTH after HELLO) before
    # anything is read or reserved. None: any peer that completes TLS (if any) is accepted.
    auth_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.max_transfer_bytes > self.max_total_bytes:
            raise ValueError("max_transfer_bytes exceeds max_total_bytes")
        if self.resume_window_s < 0:
            raise ValueError("resume_window_s must be >= 0")
        if self.max_connections < 1 or self.handshake_s <= 0:
            raise ValueError("max_connections must be >= 1 and handshake_s positive")

    @staticmethod
    def pool_budgets(transfer_bytes: int, pool_bytes: int = 0) -> tuple[int, int]:
        """Budgets for an engine whose largest possible transfer is ``transfer_bytes`` (its
        whole ``raw_bytes``: KV and every layer after it) and whose pool's transfers at once
        take at most ``pool_bytes``: one transfer that size, and in all the larger of two such
        transfers and the pool. A decode instance holds blocks before its KV is sent, so the
        landings at once carry about what the pool can hold; two full-length ones alone would
        refuse a third short request while the pool had room (``(max_transfer_bytes,
        max_total_bytes)``). The engine owns both sizes; nothing is added here."""
        if transfer_bytes <= 0 or pool_bytes < 0:
            raise ValueError(f"need transfer_bytes > 0, pool_bytes >= 0: {transfer_bytes}")
        return transfer_bytes, max(2 * transfer_bytes, pool_bytes)
