"""A listening TCP socket with one daemon thread per accepted connection and a clean close:
the threading half of the KV receiver, kept apart from its transfer protocol."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable


class ConnectionServer:
    """Accepts connections and runs ``handle(sock)`` for each on its own thread.

    ``_cond`` guards ``_threads`` and ``_conn_socks``; subclasses share it for their own
    state (and must notify it so that waiters wake when connections end)."""

    def __init__(self, host: str, port: int, handle: Callable[[socket.socket], None]) -> None:
        self._handle = handle
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

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                sock, peer = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self._spawn(self._connection, f"kv-recv-{peer[1]}", sock)

    def _connection(self, raw: socket.socket) -> None:
        with self._cond:
            self._conn_socks.add(raw)
        try:
            self._handle(raw)
        finally:
            with self._cond:
                self._conn_socks.discard(raw)
