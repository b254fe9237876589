"""Opening a transfer, sender side: K connections in parallel (TCP, TLS, HELLO), HEADER on
connection 0, then READY (the receiver admitted and allocated, and says which layers it
already holds) within the first-byte deadline. Every failure closes what was opened and
surfaces as a typed error; TLS refusals become TransferRefused."""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import ssl
import time

from prfaas.transfer.auth import AuthProof
from prfaas.transfer.errors import (
    PeerGone,
    TransferError,
    TransferRefused,
    TransferTimeout,
    error_from_code,
)
from prfaas.transfer.messages import ErrorMessage, Hello, Ready, TransferHeader
from prfaas.transfer.wire import FrameType, frame_bytes, read_control_frame, send_all

Address = tuple[str, int]


def raise_error_frame(payload: bytes) -> None:
    message = ErrorMessage.decode(payload)
    raise error_from_code(message.code, f"receiver: {message.message}")


def _left_s(end_s: float) -> float:
    left_s = end_s - time.monotonic()
    if left_s <= 0:
        raise TransferTimeout("first-byte deadline passed while opening the transfer")
    return left_s


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def open_session(
    address: Address,
    header: TransferHeader,
    num_connections: int,
    attempt: int,
    tls: ssl.SSLContext | None,
    server_name: str | None,
    first_byte_end_s: float,
    stall_s: float,
    auth_key: bytes | None = None,
) -> tuple[list[socket.socket], frozenset[int]]:
    """Connected sockets (timeouts set to ``stall_s``) and the receiver's complete layers.
    With ``auth_key``, every HELLO is followed by an AUTH frame (see transfer/auth.py)."""
    hellos = [
        Hello(header.request_id, i, num_connections, attempt, attempt > 0)
        for i in range(num_connections)
    ]
    with concurrent.futures.ThreadPoolExecutor(num_connections) as pool:
        futures = [
            pool.submit(
                _connect, address, hello, header, tls, server_name, first_byte_end_s, auth_key
            )
            for hello in hellos
        ]
        socks, errors = [], []
        for future in futures:
            try:
                socks.append(future.result())
            except TransferError as exc:
                errors.append(exc)
    if errors:
        close_all(socks)
        raise errors[0]
    try:
        complete = _await_ready(socks[0], len(header.layers), first_byte_end_s)
    except BaseException:
        close_all(socks)
        raise
    for sock in socks:
        sock.settimeout(stall_s)
    return socks, complete


def _connect(
    address: Address,
    hello: Hello,
    header: TransferHeader,
    tls: ssl.SSLContext | None,
    server_name: str | None,
    end_s: float,
    auth_key: bytes | None,
) -> socket.socket:
    try:
        sock = socket.create_connection(address, timeout=_left_s(end_s))
    except TimeoutError:
        raise TransferTimeout(f"connect to {address} timed out") from None
    except OSError as exc:
        raise PeerGone(f"connect to {address} failed: {exc}") from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=server_name)
        hello_payload = hello.encode()
        send_all(sock, frame_bytes(FrameType.HELLO, hello_payload))
        if auth_key is not None:
            proof = AuthProof.prove(auth_key, hello_payload)
            send_all(sock, frame_bytes(FrameType.AUTH, proof.encode()))
        if hello.conn_index == 0:
            send_all(sock, frame_bytes(FrameType.HEADER, header.encode()))
        return sock
    except ssl.SSLError as exc:
        sock.close()
        raise TransferRefused(f"TLS handshake with {address} failed: {exc}") from None
    except TimeoutError:
        sock.close()
        raise TransferTimeout(f"handshake with {address} timed out") from None
    except BaseException:
        sock.close()
        raise


def _await_ready(sock: socket.socket, num_layers: int, end_s: float) -> frozenset[int]:
    try:
        sock.settimeout(_left_s(end_s))
        frame_type, payload = read_control_frame(sock, FrameType.READY)
        if frame_type == FrameType.ERROR:
            raise_error_frame(payload)
        ready = Ready.decode(payload)
    except ssl.SSLError as exc:
        raise TransferRefused(f"TLS: the receiver refused us: {exc}") from None
    except PeerGone as exc:  # a TLS alert after the handshake reads as a closed socket
        raise PeerGone(f"no READY from the receiver: {exc}") from None
    if ready.num_layers != num_layers:
        raise TransferError("READY disagrees with the header's layer count")
    return ready.complete_layers
