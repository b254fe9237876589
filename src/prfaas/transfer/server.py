"""A listening TCP socket with one daemon thread per accepted connection and a clean close:
the threading half of the KV receiver, kept apart from its transfer protocol."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class ConnectionServer:
    """Accepts connections and runs ``handle(sock)`` for each on its own thread.

    ``_cond`` guards ``_threads``, ``_conn_socks`` and ``_handshakes``; subclasses share it
    for their own state (and must notify it so that waiters wake when connections end)."""

    def __init__(
        self,
        host: str,
        port: int,
        handle: Callable[[socket.socket], None],
        *,
        max_connections: int = 256,
        handshake_s: float = 10.0,
    ) -> None:
        self._handle = handle
        self._max_connections, self._handshake_s = max_connections, handshake_s
        # Accepted sockets still in their handshake -> (fd, monotonic deadline). The accept
        # loop shuts down any past it: a peer trickling bytes never holds a thread longer.
        # By fd: a TLS wrap detaches the accepted socket object from it.
        self._handshakes: dict[socket.socket, tuple[int, float]] = {}
        self.refused_connections = 0  # closed at accept: the cap was reached
        self.handshake_timeouts = 0  # shut down: handshake not done within handshake_s
        self._cond = threading.Condition()
        self._threads: set[threading.Thread] = set()
        self._conn_socks: set[socket.socket] = set()  # every open connection, for close()
        self._closing = threading.Event()
        self._server = socket.create_server((host, port), backlog=128)
        self._server.settimeout(0.2)  # the accept loop polls the closing flag

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.getsockname()[:2]
        return host, port

    @property
    def num_connections(self) -> int:
        """Open connections (any state)."""
        with self._cond:
            return len(self._conn_socks)

    def _stop_threads(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, shut every connection down, and join their threads."""
        self._closing.set()
        self._server.close()
        end_s = time.monotonic() + timeout_s
        while time.monotonic() < end_s:  # a connection accepted during close() included
            with self._cond:
                threads = [t for t in self._threads if t is not threading.current_thread()]
                for sock in self._conn_socks:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                self._cond.notify_all()
            if not threads:
                break
            threads[0].join(max(0.0, end_s - time.monotonic()))

    def _spawn(self, target: object, name: str, *args: object) -> None:
        thread = threading.Thread(target=self._run, args=(target, *args), name=name, daemon=True)
        with self._cond:  # _stop_threads copies the set under this lock: never unstarted
            self._threads.add(thread)
            thread.start()

    def _run(self, target: object, *args: object) -> None:
        try:
            target(*args)  # type: ignore[operator]
        finally:
            with self._cond:
                self._threads.discard(threading.current_thread())

    def _handshake_done(self, raw: socket.socket) -> None:
        """The connection proved itself (or ends: called before its fd is closed): from now
        on only the transfer's deadlines apply."""
        with self._cond:
            self._handshakes.pop(raw, None)

    def _expire_handshakes(self) -> None:
        now = time.monotonic()
        with self._cond:
            expired = [sock for sock, (_, end_s) in self._handshakes.items() if now > end_s]
            for sock in expired:
                fd, _ = self._handshakes.pop(sock)
                self.handshake_timeouts += 1
                # Still open: its handler pops the entry before closing the fd. Shut down
                # through a duplicate, which acts on the connection; its read returns now.
                with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as dup:
                    dup.shutdown(socket.SHUT_RDWR)
        if expired:
            logger.warning(
                "%d connection(s) past the %ss handshake", len(expired), self._handshake_s
            )

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            self._expire_handshakes()
            try:
                sock, peer = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            with self._cond:
                full = len(self._conn_socks) >= self._max_connections
                if full:
                    self.refused_connections += 1
                else:  # counted now, not when its thread starts: the cap holds under a burst
                    self._conn_socks.add(sock)
                    end_s = time.monotonic() + self._handshake_s
                    self._handshakes[sock] = (sock.fileno(), end_s)
            if full:
                logger.warning("refused a connection from %s: %d open", peer, self._max_connections)
                sock.close()
                continue
            self._spawn(self._connection, f"kv-recv-{peer[1]}", sock)

    def _connection(self, raw: socket.socket) -> None:
        try:
            self._handle(raw)
        finally:
            with self._cond:
                self._conn_socks.discard(raw)
                self._handshakes.pop(raw, None)
