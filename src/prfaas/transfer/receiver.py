"""Receiver: accepts transfers, lands chunks in preallocated buffers, reports completion.

    receiver = KvReceiver(ReceiverConfig(fingerprint=fp), tls=server_context(...))
    receiver.start()
    payload = receiver.wait(request_id, timeout_s=30.0)  # ReceivedTransfer or typed error
    ...copy payload.layers into the engine's pool...
    receiver.release(request_id)

One thread per connection. Connection 0 of a transfer carries HELLO, HEADER (admission:
fingerprint, bounds, budget, then allocation), READY, chunks, END, TRAILER and the ACK;
the others carry HELLO, chunks and END. Raw chunks are read with recv_into straight into
their destination; encoded chunks go through a per-connection staging buffer.

Failure: a cut (PeerGone) or stall parks the transfer with its complete layers for
``resume_window_s``; anything else, the total deadline, or the window closing frees every
buffer. Waiters then get the typed error. Nothing is held after a failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import time

from prfaas.transfer.auth import AuthVerifier
from prfaas.transfer.chunks import ChunkReader
from prfaas.transfer.config import ReceiverConfig
from prfaas.transfer.errors import (
    CorruptFrame,
    FingerprintMismatch,
    PeerGone,
    TransferError,
    TransferRefused,
    TransferTimeout,
    error_from_code,
)
from prfaas.transfer.landing import Landing, LandingState, ReceivedTransfer, ReceiveListener
from prfaas.transfer.messages import (
    Ack,
    End,
    ErrorMessage,
    Hello,
    Ready,
    Trailer,
    TransferHeader,
)
from prfaas.transfer.pool import BufferPool
from prfaas.transfer.server import ConnectionServer
from prfaas.transfer.tls import Plaintext
from prfaas.transfer.wire import (
    FrameType,
    frame_bytes,
    read_control_frame,
    read_frame_header,
    read_payload,
    send_all,
)

logger = logging.getLogger(__name__)
MAX_ABANDONED = 4096


class KvReceiver(ConnectionServer):
    REAP_INTERVAL_S = 0.05

    def __init__(
        self,
        config: ReceiverConfig,
        *,
        tls: ssl.SSLContext | Plaintext,
        listener: ReceiveListener | None = None,
    ) -> None:
        super().__init__(
            config.host,
            config.port,
            self._serve,
            max_connections=config.max_connections,
            handshake_s=config.handshake_s,
        )
        self.config = config
        self._tls = tls if isinstance(tls, ssl.SSLContext) else None
        if (
            self._tls is None
            and not ipaddress.ip_address(socket.gethostbyname(config.host)).is_loopback
        ):
            logger.warning("KV receiver on %s without TLS (explicitly configured)", config.host)
        self._listener = listener
        self._auth = None if config.auth_key is None else AuthVerifier(config.auth_key)
        self._landings: dict[str, Landing] = {}
        self._failures: dict[str, TransferError] = {}  # recent outcomes, for late waiters
        # Requests the consumer gave up on (deadline, fallback): a late (re)send is refused,
        # so nothing lands for a request nobody will release. Bounded, oldest forgotten.
        self._abandoned: dict[str, str] = {}  # request id -> why
        self._allocated_bytes = 0
        self._pool = BufferPool(config.pool_bytes)

    # -- public API ----------------------------------------------------------------------

    @property
    def allocated_bytes(self) -> int:
        """Bytes held in buffers: landing, parked, or complete and not yet released."""
        with self._cond:
            return self._allocated_bytes

    @property
    def num_transfers(self) -> int:
        with self._cond:
            return len(self._landings)

    def start(self) -> KvReceiver:
        for target, name in ((self._accept_loop, "kv-accept"), (self._reap_loop, "kv-reap")):
            self._spawn(target, name)
        return self

    def wait(self, request_id: str, timeout_s: float) -> ReceivedTransfer:
        """Block until ``request_id`` is complete; its typed error if it failed."""
        end_s = time.monotonic() + timeout_s
        with self._cond:
            while True:
                landing = self._landings.get(request_id)
                if landing is not None and landing.state == LandingState.COMPLETE:
                    return ReceivedTransfer(landing.header, landing.buffers)
                if landing is None and request_id in self._failures:
                    raise self._failures[request_id]
                if request_id in self._abandoned:
                    raise TransferRefused(f"{request_id} was abandoned")
                left_s = end_s - time.monotonic()
                if left_s <= 0:
                    raise TransferTimeout(f"{request_id} not complete within {timeout_s}s")
                self._cond.wait(left_s)

    def release(self, request_id: str) -> None:
        """The consumer is done with a complete transfer's buffers."""
        with self._cond:
            landing = self._landings.get(request_id)
            if landing is None or landing.state != LandingState.COMPLETE:
                raise KeyError(f"{request_id} is not a complete transfer")
            self._remove(landing)

    def abandon(self, request_id: str, reason: str = "") -> None:
        """The consumer gave up on ``request_id`` (it fell back to a local prefill) for
        ``reason``: free whatever has landed or is landing, wake its waiters, and refuse a
        late (re)send, saying why."""
        with self._cond:
            self._abandoned[request_id] = reason[:200] or "no reason given"
            while len(self._abandoned) > MAX_ABANDONED:
                self._abandoned.pop(next(iter(self._abandoned)))
            landing = self._landings.get(request_id)
            if landing is not None and landing.state == LandingState.COMPLETE:
                self._remove(landing)
                landing = None
            self._cond.notify_all()
        if landing is not None:
            self._fail(landing, TransferRefused(f"{request_id} abandoned by the consumer"))

    def close(self) -> None:
        self._stop_threads()
        with self._cond:
            for landing in list(self._landings.values()):
                self._remove(landing)

    def __enter__(self) -> KvReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- threads -------------------------------------------------------------------------

    def _reap_loop(self) -> None:
        deadlines = self.config.deadlines
        while not self._closing.wait(self.REAP_INTERVAL_S):
            now = time.monotonic()
            with self._cond:
                landings = list(self._landings.values())
            for landing in landings:
                total_end_s = landing.created_s + deadlines.total_s
                if landing.state == LandingState.RECEIVING and now > total_end_s:
                    self._fail(landing, TransferTimeout(f"total deadline {deadlines.total_s}s"))
                elif landing.state == LandingState.PARKED and now > min(
                    total_end_s, landing.parked_s + self.config.resume_window_s
                ):
                    self._fail(landing, landing.error or PeerGone("resume window closed"))

    # -- one connection ------------------------------------------------------------------

    def _serve(self, raw: socket.socket) -> None:
        sock, landing, conn_index, attempt = raw, None, -1, -1
        try:
            sock.settimeout(self.config.deadlines.first_byte_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(raw, server_side=True)
            frame_type, payload = read_control_frame(sock, FrameType.HELLO)
            if frame_type == FrameType.ERROR:
                return
            hello = Hello.decode(payload)
            if self._auth is not None:  # before any HEADER is read or byte reserved
                self._authenticate(sock, payload)
            self._handshake_done(raw)
            conn_index, attempt = hello.conn_index, hello.attempt
            sock.settimeout(self.config.deadlines.stall_s)
            if conn_index == 0:
                landing = self._admit(sock, hello)
            else:
                landing = self._join(sock, hello)
            self._receive(sock, landing, hello)
        except ssl.SSLError as exc:
            logger.info("TLS handshake refused: %s", exc)
        except TransferError as exc:
            if landing is not None:
                self._fail(landing, exc, sock if conn_index == 0 else None, attempt)
            else:
                self._send_error(sock, exc)
            logger.info("transfer connection failed: %r", exc)
        except Exception:
            logger.exception("receiver connection crashed")
            if landing is not None:
                self._fail(landing, TransferError("receiver internal error"), None, attempt)
        finally:
            self._handshake_done(raw)  # before the fd is closed (and may be reused)
            with contextlib.suppress(OSError):
                sock.close()
            if landing is not None:
                landing.detach(sock)

    def _authenticate(self, sock: socket.socket, hello_payload: bytes) -> None:
        assert self._auth is not None
        try:
            frame_type, proof = read_control_frame(sock, FrameType.AUTH)
        except CorruptFrame as exc:
            raise TransferRefused(f"peer not authenticated: no valid AUTH frame ({exc})") from None
        if frame_type == FrameType.ERROR:
            raise PeerGone("sender gave up before AUTH")
        self._auth.verify(hello_payload, proof)

    def _admit(self, sock: socket.socket, hello: Hello) -> Landing:
        """Validate HEADER, then allocate (or resume) before answering READY."""
        frame_type, payload = read_control_frame(sock, FrameType.HEADER)
        if frame_type == FrameType.ERROR:
            raise PeerGone("sender gave up before its header")
        header = TransferHeader.decode(payload)
        if header.request_id != hello.request_id:
            raise CorruptFrame("HEADER and HELLO name different requests")
        if self.config.fingerprint is not None and header.fingerprint != self.config.fingerprint:
            raise FingerprintMismatch(
                f"payload is for model {header.fingerprint.hex()[:16]}, "
                f"this receiver serves {self.config.fingerprint.hex()[:16]}"
            )
        if header.raw_bytes > self.config.max_transfer_bytes:
            raise TransferRefused(f"{header.raw_bytes} bytes exceed max_transfer_bytes")
        with self._cond:
            if header.request_id in self._abandoned:
                why = self._abandoned[header.request_id]
                raise TransferRefused(f"{header.request_id} was abandoned by its consumer ({why})")
            landing = self._landings.get(header.request_id)
            if landing is not None and landing.state == LandingState.COMPLETE:
                raise TransferRefused(f"{header.request_id} is already complete")
            if landing is not None and hello.resume and landing.header == header:
                landing.close_sockets()  # an older attempt still connected
                landing.start_attempt(hello.attempt, hello.num_connections)
            else:
                if landing is not None:
                    self._remove(landing)
                if self._allocated_bytes + header.raw_bytes > self.config.max_total_bytes:
                    raise TransferRefused("receiver memory budget exhausted")
                landing = Landing(header, hello.attempt, hello.num_connections, self._pool)
                self._allocated_bytes += landing.num_bytes
                self._landings[header.request_id] = landing
                self._failures.pop(header.request_id, None)
            landing.attach(sock)
            ready = Ready(len(header.layers), frozenset(landing.complete))
            self._cond.notify_all()
        send_all(sock, frame_bytes(FrameType.READY, ready.encode()))
        return landing

    def _join(self, sock: socket.socket, hello: Hello) -> Landing:
        """Connections 1..K-1 wait for connection 0 to admit their attempt."""
        end_s = time.monotonic() + self.config.deadlines.first_byte_s
        with self._cond:
            while True:
                landing = self._landings.get(hello.request_id)
                if (
                    landing is not None
                    and landing.attempt == hello.attempt
                    and landing.state == LandingState.RECEIVING
                ):
                    if hello.num_connections != landing.num_connections:
                        raise CorruptFrame("connections disagree on their count")
                    landing.attach(sock)
                    return landing
                left_s = end_s - time.monotonic()
                if self._closing.is_set():
                    raise PeerGone("receiver closing")
                if left_s <= 0:
                    raise TransferTimeout(f"connection {hello.conn_index}: no admitted header")
                self._cond.wait(left_s)

    def _receive(self, sock: socket.socket, landing: Landing, hello: Hello) -> None:
        conn_index, chunks = hello.conn_index, ChunkReader(sock, landing, hello.attempt)
        while True:
            frame = read_frame_header(sock)
            if frame.frame_type == FrameType.CHUNK:
                completed = chunks.read(frame)
                if completed is not None and self._listener:
                    self._listener.on_layer(landing.header.request_id, completed)
            elif frame.frame_type == FrameType.END:
                landing.connection_ended(
                    conn_index, End.decode(read_payload(sock, frame)).num_chunks
                )
                if conn_index != 0:
                    return
            elif frame.frame_type == FrameType.TRAILER and conn_index == 0:
                trailer = Trailer.decode(read_payload(sock, frame))
                self._complete(sock, landing, trailer)
                return
            elif frame.frame_type == FrameType.ERROR:
                message = ErrorMessage.decode(read_payload(sock, frame))
                raise error_from_code(message.code, f"sender: {message.message}")
            else:
                raise CorruptFrame(f"unexpected {frame.frame_type.name} on connection {conn_index}")

    def _complete(self, sock: socket.socket, landing: Landing, trailer: Trailer) -> None:
        """After TRAILER: wait for every connection's END, verify, then ACK."""
        end_s = time.monotonic() + self.config.deadlines.stall_s
        while len(landing.ended) < landing.num_connections:
            if time.monotonic() > end_s or landing.state != LandingState.RECEIVING:
                raise TransferTimeout("connections did not end after the trailer")
            time.sleep(0.001)
        landing.verify(trailer)
        with self._cond:
            if landing.state != LandingState.RECEIVING:
                raise TransferTimeout("transfer failed before its trailer was verified")
            landing.state = LandingState.COMPLETE
            self._cond.notify_all()
        send_all(sock, frame_bytes(FrameType.ACK, Ack(trailer.num_chunks).encode()))
        if self._listener:
            self._listener.on_complete(landing.header.request_id)

    # -- failure -------------------------------------------------------------------------

    def _fail(
        self,
        landing: Landing,
        error: TransferError,
        conn0: socket.socket | None = None,
        attempt: int | None = None,
    ) -> None:
        """Park (cut or stall, resumable) or free; tell waiters; close the attempt.
        A failure reported by a connection of an older attempt changes nothing."""
        with self._cond:
            if attempt is not None and (
                attempt != landing.attempt or landing.state == LandingState.PARKED
            ):
                return  # an older attempt, or the echo of the parking we did ourselves
            resumable = isinstance(error, PeerGone | TransferTimeout) and self._resumable(landing)
            if landing.state == LandingState.RECEIVING and resumable:
                landing.state, landing.parked_s, landing.error = (
                    LandingState.PARKED,
                    time.monotonic(),
                    error,
                )
                logger.info("transfer %s parked for resume: %r", landing.header.request_id, error)
            elif landing.state in (LandingState.RECEIVING, LandingState.PARKED):
                self._failures[landing.header.request_id] = error
                while len(self._failures) > 1024:
                    self._failures.pop(next(iter(self._failures)))
                self._remove(landing)
                landing.state = LandingState.FAILED
                logger.info("transfer %s failed: %r", landing.header.request_id, error)
            else:
                return
            self._cond.notify_all()
        if conn0 is not None and not isinstance(error, PeerGone):
            self._send_error(conn0, error)
        landing.close_sockets()
        if landing.state == LandingState.FAILED and self._listener:
            self._listener.on_failed(landing.header.request_id, error)

    def _resumable(self, landing: Landing) -> bool:
        deadline_s = landing.created_s + self.config.deadlines.total_s
        return self.config.resume_window_s > 0 and time.monotonic() < deadline_s

    def _remove(self, landing: Landing) -> None:
        """Free a landing's buffers and forget it (caller holds ``_cond``)."""
        if self._landings.get(landing.header.request_id) is landing:
            del self._landings[landing.header.request_id]
        self._allocated_bytes -= landing.free()

    def _send_error(self, sock: socket.socket, error: TransferError) -> None:
        message = ErrorMessage(error.code, str(error)).encode()
        with contextlib.suppress(TransferError, OSError):
            sock.settimeout(1.0)
            send_all(sock, frame_bytes(FrameType.ERROR, message))
