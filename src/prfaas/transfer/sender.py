"""Sender: streams one payload's layers, as prefill produces them, over K paced connections.

    transfer = sender.open(address, header)      # connect K, HELLO each, HEADER, await READY
    transfer.send_layer(i, array)                # any order, as soon as layer i exists
    stats = transfer.finish()                    # END each, TRAILER, await ACK

``send_layer`` only enqueues whole-block chunks; K writer threads pull them (that is the
striping), encode, checksum, pace and send. The caller must leave each array unchanged
until ``finish`` returns or the transfer fails: raw chunks are sent from it without a copy.
Any failure aborts every connection and surfaces as a typed error from ``finish``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import queue
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.poly1305 import Poly1305

from prfaas.transfer.chunks import ChunkJob, Record, write_chunk
from prfaas.transfer.codecs import CodecSpec
from prfaas.transfer.config import Deadlines
from prfaas.transfer.errors import (
    PeerGone,
    TransferError,
    TransferTimeout,
)
from prfaas.transfer.handshake import open_session, raise_error_frame
from prfaas.transfer.link import Link
from prfaas.transfer.messages import (
    Ack,
    End,
    Trailer,
    TransferHeader,
    chunk_digest,
)
from prfaas.transfer.monitor import tcp_info
from prfaas.transfer.pacing import GRANT_MAX_BYTES, Flow
from prfaas.transfer.tls import Plaintext
from prfaas.transfer.wire import (
    MAX_CHUNK_FRAME_BYTES,
    FrameType,
    frame_bytes,
    read_control_frame,
    send_all,
)

logger = logging.getLogger(__name__)

Address = tuple[str, int]


@dataclass(frozen=True)
class TransferStats:
    request_id: str
    raw_bytes: int  # KV bytes (as stored) delivered by this attempt
    wire_bytes: int  # frame bytes sent, after the codec
    seconds: float  # open() to ACK
    connections: int
    codec: str
    layers_sent: int
    layers_skipped: int  # already complete at the receiver (resume)

    @property
    def goodput_gbps(self) -> float:
        return self.wire_bytes * 8 / self.seconds / 1e9

    @property
    def kv_rate_gbps(self) -> float:
        return self.raw_bytes * 8 / self.seconds / 1e9


class OutgoingTransfer:
    def __init__(
        self,
        sender: KvSender,
        address: Address,
        header: TransferHeader,
        deadline_s: float | None,
        attempt: int,
    ) -> None:
        self.header = header
        self._link = sender.link
        self._deadlines = sender.deadlines
        self._spec = CodecSpec.parse(header.codec)
        self._started_s = time.monotonic()
        # The request's deadline bounds the transfer too: past it the receiver has given up
        # (fallen back), so sending on would only hold buffers at both ends.
        self._deadline_s = min(
            self._started_s + self._deadlines.total_s,
            math.inf if deadline_s is None else deadline_s,
        )
        self._lock = threading.Lock()
        self._error: TransferError | None = None
        self._queue: queue.SimpleQueue[ChunkJob | None] = queue.SimpleQueue()
        self._records: list[Record] = []
        self._wire_bytes = 0
        self._raw_bytes = 0
        self._given: set[int] = set()
        self._idle_s = [0.0] * self._link.config.connections
        self._writers: list[threading.Thread] = []
        self._finalized = False
        for layer in header.layers:
            if layer.row_bytes * 2 > MAX_CHUNK_FRAME_BYTES:
                raise ValueError(f"layer {layer.name!r}: one block exceeds the frame bound")
        first_byte_end_s = min(self._started_s + self._deadlines.first_byte_s, self._deadline_s)
        self._socks, self.completed_layers = open_session(
            address,
            header,
            self._link.config.connections,
            attempt,
            sender.tls,
            sender.server_name,
            first_byte_end_s,
            self._deadlines.stall_s,
            sender.auth_key,
        )
        self._link.monitor.record_opened()
        self._queued_bytes = 0  # KV bytes given by send_layer (the link's backlog until written)
        self._flow: Flow = self._link.pacer.register(deadline_s)
        self._writers = [
            threading.Thread(target=self._writer, args=(i,), name=f"kv-send-{i}", daemon=True)
            for i in range(len(self._socks))
        ]
        for writer in self._writers:
            writer.start()

    # -- streaming -----------------------------------------------------------------------

    def send_layer(self, index: int, array: np.ndarray) -> None:
        """Queue layer ``index`` (shape and dtype as in the header); returns at once."""
        self._raise_if_failed()
        entry = self.header.layers[index]
        if index in self._given:
            raise ValueError(f"layer {index} given twice")
        if array.shape != entry.shape or array.dtype != np.dtype(entry.dtype.numpy_name):
            raise ValueError(
                f"layer {index}: got {array.dtype}{array.shape}, header says "
                f"{entry.dtype.numpy_name}{entry.shape}"
            )
        self._given.add(index)
        if index in self.completed_layers:
            return
        array = np.ascontiguousarray(array)
        rows = max(1, self._link.config.chunk_bytes // entry.row_bytes)
        for start in range(0, entry.shape[0], rows):
            end = min(start + rows, entry.shape[0])
            job = ChunkJob(index, start, end, array[start:end])
            with self._lock:
                self._queued_bytes += job.rows.nbytes
            self._link.monitor.record_backlog(job.rows.nbytes)
            self._queue.put(job)

    def _writer(self, conn_index: int) -> None:
        sock = self._socks[conn_index]
        num_chunks = 0
        try:
            while True:
                waited_s = time.monotonic()
                job = self._queue.get()
                self._idle_s[conn_index] += time.monotonic() - waited_s
                if job is None or self._error is not None:
                    break
                entry = self.header.layers[job.layer]
                send = functools.partial(self._send, sock)
                record = write_chunk(send, job, entry, self._spec)
                with self._lock:
                    self._records.append(record)
                    self._raw_bytes += job.rows.nbytes
                self._link.monitor.record_backlog(-job.rows.nbytes)
                num_chunks += 1
            if self._error is None:
                self._send(sock, frame_bytes(FrameType.END, End(num_chunks).encode()), None)
        except TransferError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug must still abort the transfer, not hang it
            logger.exception("writer %d failed", conn_index)
            self._fail(TransferError(f"writer failed: {exc!r}"))

    def _send(self, sock: socket.socket, data: bytes | memoryview, check: Poly1305 | None) -> None:
        """Paced send in grants of at most GRANT_MAX_BYTES, checking the total deadline
        between them; feeds ``check`` each grant while it is in cache."""
        view = memoryview(data).cast("B")
        for offset in range(0, len(view), GRANT_MAX_BYTES):
            if time.monotonic() > self._deadline_s:
                raise TransferTimeout("transfer deadline passed")
            piece = view[offset : offset + GRANT_MAX_BYTES]
            if check is not None:
                check.update(piece)
            self._flow.acquire(len(piece))
            send_all(sock, piece)
            self._link.monitor.record_sent(len(piece))
            with self._lock:
                self._wire_bytes += len(piece)

    # -- completion and failure ----------------------------------------------------------

    def finish(self) -> TransferStats:
        """Wait until every layer is sent and acknowledged; typed error on any failure."""
        missing = set(range(len(self.header.layers))) - self._given
        if missing:
            self.abort()
            raise ValueError(f"finish() before layers {sorted(missing)} were given")
        for _ in self._writers:
            self._queue.put(None)
        try:
            for writer in self._writers:
                writer.join(max(0.0, self._deadline_s - time.monotonic()))
                if writer.is_alive():
                    self._fail(TransferTimeout("transfer deadline passed"))
            self._raise_if_failed()
            waited_s = time.monotonic()
            ack = self._trailer_and_ack()
            self._link.monitor.record_ack_wait(time.monotonic() - waited_s)
            if ack.num_chunks != len(self._records):
                raise TransferError(f"receiver acknowledged {ack.num_chunks} chunks")
        except TransferError as exc:
            self._fail(exc)
            self._finalize(ok=False)
            raise self._error or exc from None
        self._finalize(ok=True)
        return TransferStats(
            request_id=self.header.request_id,
            raw_bytes=self._raw_bytes,
            wire_bytes=self._wire_bytes,
            seconds=time.monotonic() - self._started_s,
            connections=len(self._socks),
            codec=self.header.codec,
            layers_sent=len(self._given - self.completed_layers),
            layers_skipped=len(self.completed_layers),
        )

    def _trailer_and_ack(self) -> Ack:
        sock = self._socks[0]
        trailer = Trailer(len(self._records), chunk_digest(self._records))
        self._send(sock, frame_bytes(FrameType.TRAILER, trailer.encode()), None)
        left_s = self._deadline_s - time.monotonic()
        if left_s <= 0:
            raise TransferTimeout("total deadline passed before the ACK")
        sock.settimeout(left_s)
        frame_type, payload = read_control_frame(sock, FrameType.ACK)
        if frame_type == FrameType.ERROR:
            raise_error_frame(payload)
        return Ack.decode(payload)

    def _fail(self, error: TransferError) -> None:
        with self._lock:
            if self._error is not None:
                return
            self._error = error
        for _ in self._writers:
            self._queue.put(None)
        self._shutdown()  # unblocks writers stuck in send

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Give up: close every connection (the receiver frees or parks what it holds)."""
        self._fail(TransferError("aborted by the sender"))
        self._finalize(ok=False)

    def _finalize(self, ok: bool) -> None:
        """Once per transfer: join the writers, record the link's view, close everything."""
        if self._finalized:
            return
        self._finalized = True
        for writer in self._writers:
            if writer is not threading.current_thread():
                writer.join(self._deadlines.stall_s)
        busy_s = (time.monotonic() - self._started_s) - sum(self._idle_s) / len(self._idle_s)
        for sock in self._socks:
            self._link.monitor.record_connection(tcp_info(sock))
        self._close()
        self._flow.close()
        rate = self._link.rate_gbps
        with self._lock:
            unsent = self._queued_bytes - self._raw_bytes
        self._link.monitor.record_backlog(-unsent)
        self._link.monitor.record_transfer(ok, self._wire_bytes, busy_s, rate)

    def _shutdown(self) -> None:
        """Unblock every thread using the sockets; closing waits for the writers."""
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _close(self) -> None:
        self._shutdown()
        for sock in self._socks:
            sock.close()

    def __enter__(self) -> OutgoingTransfer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._finalized:  # left without finish(): nothing may stay open
            self.abort()


class KvSender:
    """Sends payloads over one link. Thread-safe: concurrent transfers share the link."""

    def __init__(
        self,
        link: Link,
        *,
        tls: ssl.SSLContext | Plaintext,
        server_name: str | None = None,
        deadlines: Deadlines | None = None,
        auth_key: bytes | None = None,
    ) -> None:
        """``auth_key`` (``kv_auth_key(cluster token)``): prove it on every connection, as
        a receiver configured with the same key requires."""
        self.link = link
        self.auth_key = auth_key
        self.tls = tls if isinstance(tls, ssl.SSLContext) else None
        self.server_name = server_name
        self.deadlines = deadlines or Deadlines()

    def open(
        self,
        address: Address,
        header: TransferHeader,
        *,
        deadline_s: float | None = None,
        attempt: int = 0,
    ) -> OutgoingTransfer:
        """Start a transfer. ``deadline_s``: time.monotonic() instant by which it must be
        acknowledged (TransferTimeout after it), also its EDF pacing priority.
        ``attempt`` > 0 resumes: layers the receiver already holds are skipped
        (``completed_layers``) and ``send_layer`` ignores them."""
        return OutgoingTransfer(self, address, header, deadline_s, attempt)

    def send(
        self,
        address: Address,
        header: TransferHeader,
        layers: Sequence[np.ndarray],
        *,
        retries: int = 0,
        deadline_s: float | None = None,
        attempt_from: int = 0,
    ) -> TransferStats:
        """Send a whole payload; on PeerGone or TransferTimeout retry up to ``retries``
        times, resuming from the last complete layer. ``attempt_from`` > 0 resumes a
        transfer an earlier call left cut."""
        for attempt in range(attempt_from, attempt_from + retries + 1):
            try:
                transfer = self.open(address, header, deadline_s=deadline_s, attempt=attempt)
                for index, array in enumerate(layers):
                    transfer.send_layer(index, array)
                return transfer.finish()
            except (PeerGone, TransferTimeout) as exc:
                past_deadline = deadline_s is not None and time.monotonic() >= deadline_s
                if attempt == attempt_from + retries or past_deadline:
                    raise
                logger.warning(
                    "transfer %s attempt %d: %s; resuming", header.request_id, attempt, exc
                )
        raise AssertionError("unreachable")
