"""Link emulator: a TCP relay that behaves like a WAN link, for tests, demos and rehearsals.

    client ──▶ emulator (listen) ──▶ target        and back, per connection

Each direction is a pipe: a reader stamps data with its due time (now + RTT/2 + jitter,
never earlier than the data before it: TCP keeps order), a writer releases it when due,
paced by one token bucket per direction shared by all connections (the link's cap). The
pipe holds at most ``queue_bytes``, so the sender sees backpressure as on a real path.
Scripted events, timed from the first accepted connection: stalls (nothing moves) and cuts
(every open connection is shut in both directions); ``cut_after_bytes`` cuts once after that
many bytes went towards the target. A blackhole (``blackhole(True)`` until ``False``) is a
stall without an end: connections are still accepted, nothing is forwarded.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import random
import socket
import threading
import time
from dataclasses import dataclass

from prfaas.transfer.pacing import GRANT_MAX_BYTES, Pacer

logger = logging.getLogger(__name__)

Address = tuple[str, int]


@dataclass(frozen=True)
class EmulatorConfig:
    listen: Address
    # None: not known yet (a worker that binds its own port announces it when registering;
    # ``retarget`` sets it). Until then connections are accepted and closed.
    target: Address | None
    rate_gbps: float | None = None  # per direction; None = uncapped
    rtt_ms: float = 0.0
    jitter_ms: float = 0.0  # uniform extra one-way delay in [0, jitter_ms]
    stalls: tuple[tuple[float, float], ...] = ()  # (at_s, duration_s)
    cuts_at_s: tuple[float, ...] = ()
    cut_after_bytes: int | None = None
    queue_bytes: int = 8 << 20
    seed: int = 0


class _Pipe:
    """One direction of one connection."""

    def __init__(self, emu: LinkEmulator, src: socket.socket, dst: socket.socket, up: bool):
        self.emu, self.src, self.dst, self.up = emu, src, dst, up
        self.cond = threading.Condition()
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued_bytes = 0
        self.eof = False
        self.flow = (emu.up_pacer if up else emu.down_pacer).register()

    def read_loop(self) -> None:
        cfg, last_due = self.emu.config, 0.0
        try:
            while True:
                data = self.src.recv(GRANT_MAX_BYTES)
                if not data:
                    break
                delay_s = cfg.rtt_ms / 2000 + self.emu.rng.uniform(0, cfg.jitter_ms) / 1000
                last_due = max(last_due, time.monotonic() + delay_s)
                with self.cond:
                    while self.queued_bytes > self.emu.config.queue_bytes and not self.eof:
                        self.cond.wait(0.1)
                    self.queue.append((last_due, data))
                    self.queued_bytes += len(data)
                    self.cond.notify_all()
        except OSError:
            pass
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def direct_loop(self) -> None:
        """No delay to add: one thread reads, paces and writes, without a queue."""
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        try:
            while (n := self.src.recv_into(buf)) > 0:
                for offset in range(0, n, GRANT_MAX_BYTES):
                    piece = view[offset : min(n, offset + GRANT_MAX_BYTES)]
                    self.emu.wait_while_stalled()
                    self.flow.acquire(len(piece))
                    self.dst.sendall(piece)
                    self.emu.count(len(piece), self.up)
            with contextlib.suppress(OSError):
                self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            self.emu.shut(self.src, self.dst)
        finally:
            self.flow.close()

    def write_loop(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.eof:
                        self.cond.wait(0.1)
                    if not self.queue:
                        break
                    due_s, data = self.queue.popleft()
                    self.queued_bytes -= len(data)
                    self.cond.notify_all()
                time.sleep(max(0.0, due_s - time.monotonic()))
                self.emu.wait_while_stalled()
                self.flow.acquire(len(data))
                self.dst.sendall(data)
                self.emu.count(len(data), self.up)
            with contextlib.suppress(OSError):
                self.dst.shutdown(socket.SHUT_WR)  # pass the EOF on
        except OSError:
            self.emu.shut(self.src, self.dst)
        finally:
            self.flow.close()


class LinkEmulator:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.up_pacer = Pacer(config.rate_gbps)
        self.down_pacer = Pacer(config.rate_gbps)
        self._lock = threading.Lock()
        self._target = config.target
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self._threads: list[threading.Thread] = []
        self._stalled_until_s = 0.0
        self._first_s: float | None = None
        self._up_bytes = 0
        self._cut_done = False
        self._closing = threading.Event()
        self._server = socket.create_server(config.listen, backlog=128)
        self._server.settimeout(0.1)

    @property
    def address(self) -> Address:
        host, port = self._server.getsockname()[:2]
        return host, port

    @property
    def forwarded_up_bytes(self) -> int:
        return self._up_bytes

    @property
    def target(self) -> Address | None:
        return self._target

    def retarget(self, target: Address) -> None:
        """Relay new connections to ``target`` (open ones keep theirs)."""
        with self._lock:
            self._target = target

    def set_rate_gbps(self, rate_gbps: float | None) -> None:
        self.up_pacer.set_rate_gbps(rate_gbps)
        self.down_pacer.set_rate_gbps(rate_gbps)

    def start(self) -> LinkEmulator:
        self._spawn(self._accept_loop)
        self._spawn(self._script_loop)
        return self

    def close(self) -> None:
        self._closing.set()
        self._server.close()
        self.cut()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5.0)

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def cut(self) -> None:
        """Shut every open connection in both directions, now."""
        with self._lock:
            conns, self._conns = self._conns, []
        for pair in conns:
            self.shut(*pair)
        if conns:
            logger.info("link emulator: cut %d connections", len(conns))

    def stall(self, duration_s: float) -> None:
        with self._lock:
            self._stalled_until_s = max(self._stalled_until_s, time.monotonic() + duration_s)

    def blackhole(self, on: bool) -> None:
        """Forward nothing from now until ``blackhole(False)`` (which ends any stall)."""
        with self._lock:
            self._stalled_until_s = math.inf if on else 0.0
        logger.info("link emulator: blackhole %s", "on" if on else "off")

    def wait_while_stalled(self) -> None:
        while (left_s := self._stalled_until_s - time.monotonic()) > 0:
            if self._closing.wait(min(left_s, 0.05)):
                return

    def count(self, num_bytes: int, up: bool) -> None:
        if not up:
            return
        with self._lock:
            self._up_bytes += num_bytes
            limit = self.config.cut_after_bytes
            trigger = limit is not None and self._up_bytes >= limit and not self._cut_done
            self._cut_done = self._cut_done or trigger
        if trigger:
            self.cut()

    @staticmethod
    def shut(*socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:  # close() copies the list under this lock: never an unstarted one
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            target = self._target
            if target is None:
                logger.warning("link emulator: no target yet; connection closed")
                client.close()
                continue
            try:
                upstream = socket.create_connection(target, timeout=5.0)
            except OSError as exc:
                logger.warning("link emulator: target unreachable: %s", exc)
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._first_s = self._first_s or time.monotonic()
                self._conns.append((client, upstream))
            self._spawn(self._relay, client, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        pipes = [_Pipe(self, client, upstream, True), _Pipe(self, upstream, client, False)]
        threads = [
            threading.Thread(target=f, daemon=True)
            for p in pipes
            for f in (p.read_loop, p.write_loop)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with self._lock:
            if (client, upstream) in self._conns:
                self._conns.remove((client, upstream))
        client.close()
        upstream.close()

    def _script_loop(self) -> None:
        events = sorted(
            [(at_s, "stall", duration_s) for at_s, duration_s in self.config.stalls]
            + [(at_s, "cut", 0.0) for at_s in self.config.cuts_at_s]
        )
        while events and not self._closing.wait(0.005):
            if self._first_s is None:
                continue
            at_s, kind, duration_s = events[0]
            if time.monotonic() - self._first_s >= at_s:
                events.pop(0)
                logger.info("link emulator: %s at %.3fs", kind, at_s)
                if kind == "stall":
                    self.stall(duration_s)
                else:
                    self.cut()
