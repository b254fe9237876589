"""Receiver-side state of one transfer: preallocated buffers and what has landed in them.

Invariants (under ``lock``):
- ``buffers[i]`` has the shape and dtype of header layer i and is allocated once, when the
  header is admitted; chunks land in place (no copies for raw chunks).
- a block may be claimed once per attempt; ``claimed`` marks blocks whose chunk is being
  read or has landed, ``landed_rows[i]`` counts landed blocks, and layer i is complete when
  it equals ``shape[0]``. A resume keeps complete layers and forgets the rest.
- ``num_bytes`` is what this landing holds against the receiver's budget until freed.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from prfaas.transfer.errors import CorruptFrame, PeerGone, TransferError
from prfaas.transfer.messages import Trailer, TransferHeader, chunk_digest
from prfaas.transfer.pool import BufferPool, arena_bytes, carve


class LandingState(enum.Enum):
    RECEIVING = "receiving"
    PARKED = "parked"  # cut; complete layers kept for a resume until the window closes
    COMPLETE = "complete"  # verified; buffers owned by the consumer until released
    FAILED = "failed"  # buffers freed


class Landing:
    def __init__(
        self, header: TransferHeader, attempt: int, num_connections: int, pool: BufferPool
    ) -> None:
        self.header = header
        self.lock = threading.Lock()
        self.state = LandingState.RECEIVING
        self.created_s = time.monotonic()
        self.parked_s = 0.0
        self.error: TransferError | None = None
        sizes = [e.num_bytes for e in header.layers]
        self._pool = pool
        self._arena: np.ndarray | None = pool.take(arena_bytes(sizes))
        self.buffers = [
            view.view(np.dtype(e.dtype.numpy_name)).reshape(e.shape)
            for view, e in zip(carve(self._arena, sizes), header.layers, strict=True)
        ]
        self.num_bytes = header.raw_bytes
        self.claimed = [np.zeros(e.shape[0], bool) for e in header.layers]
        self.landed_rows = [0] * len(header.layers)
        self.complete: set[int] = set()
        self.sockets: set[socket.socket] = set()
        self.start_attempt(attempt, num_connections)

    def start_attempt(self, attempt: int, num_connections: int) -> None:
        """Begin (or resume) an attempt: incomplete layers start over."""
        with self.lock:
            self.attempt = attempt
            self.num_connections = num_connections
            self.ended: dict[int, int] = {}  # conn index -> chunks it carried (from END)
            self.records: list[tuple[int, int, int, bytes]] = []
            for i, claimed in enumerate(self.claimed):
                if i not in self.complete:
                    claimed[:] = False
                    self.landed_rows[i] = 0
            self.state = LandingState.RECEIVING

    def _check_current(self, attempt: int) -> None:
        if attempt != self.attempt or self.state != LandingState.RECEIVING:
            raise PeerGone(f"attempt {attempt} is no longer current")

    def claim(self, attempt: int, layer: int, start: int, end: int) -> np.ndarray:
        """The destination of blocks [start, end) of ``layer``; CorruptFrame if out of bounds
        or any of them was already claimed in this attempt."""
        with self.lock:
            self._check_current(attempt)
            if layer >= len(self.buffers) or end > self.header.layers[layer].shape[0]:
                raise CorruptFrame(f"chunk layer {layer} blocks {start}..{end} out of bounds")
            if self.claimed[layer][start:end].any():
                raise CorruptFrame(f"chunk layer {layer} blocks {start}..{end} sent twice")
            self.claimed[layer][start:end] = True
            return self.buffers[layer][start:end]

    def landed(self, attempt: int, layer: int, start: int, end: int, tag: bytes) -> bool:
        """Record a verified chunk; True when it completed its layer."""
        with self.lock:
            self._check_current(attempt)
            self.records.append((layer, start, end, tag))
            self.landed_rows[layer] += end - start
            if self.landed_rows[layer] == self.header.layers[layer].shape[0]:
                self.complete.add(layer)
                return True
            return False

    def connection_ended(self, conn_index: int, num_chunks: int) -> None:
        with self.lock:
            self.ended[conn_index] = num_chunks

    def verify(self, trailer: Trailer) -> None:
        """Everything announced has landed and matches the trailer (CorruptFrame else)."""
        with self.lock:
            if len(self.ended) != self.num_connections:
                raise CorruptFrame(f"{len(self.ended)}/{self.num_connections} connections ended")
            counted = sum(self.ended.values())
            if not trailer.num_chunks == counted == len(self.records):
                raise CorruptFrame(
                    f"trailer says {trailer.num_chunks} chunks, connections {counted}, "
                    f"landed {len(self.records)}"
                )
            if len(self.complete) != len(self.header.layers):
                missing = len(self.header.layers) - len(self.complete)
                raise CorruptFrame(f"{missing} layers incomplete at the trailer")
            if chunk_digest(self.records) != trailer.digest:
                raise CorruptFrame("trailer digest mismatch")

    def free(self) -> int:
        """Drop the buffers; returns the bytes released. The arena goes back to the pool
        once no connection thread can still write into it (see detach)."""
        with self.lock:
            freed, self.num_bytes = self.num_bytes, 0
            self.buffers = []
            self._recycle_if_idle()
        return freed

    def attach(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.add(sock)

    def detach(self, sock: socket.socket) -> None:
        """A connection thread is done with this landing."""
        with self.lock:
            self.sockets.discard(sock)
            self._recycle_if_idle()

    def _recycle_if_idle(self) -> None:
        if self.num_bytes == 0 and not self.sockets and self._arena is not None:
            self._pool.give(self._arena)
            self._arena = None

    def close_sockets(self) -> None:
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class ReceiveListener(Protocol):
    """Optional callbacks, called from connection threads; keep them short."""

    def on_layer(self, request_id: str, layer: int) -> None: ...
    def on_complete(self, request_id: str) -> None: ...
    def on_failed(self, request_id: str, error: TransferError) -> None: ...


@dataclass(frozen=True)
class ReceivedTransfer:
    header: TransferHeader
    layers: list[np.ndarray]  # layer i: header.layers[i].shape, dtype numpy_name
