"""The gateway's live view of its workers: registration, heartbeats, health, and the kv
index fed by their cache events. Implements the router's ``FleetView`` protocol.

Liveness is this gateway's own (another gateway keeps its own fleet); the kv index may be
shared with other gateways (``RedisKvIndex``): registration there is idempotent per epoch and
event batches apply once, whichever gateway delivers them first."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from prfaas.messages import Heartbeat, LinkReport, WorkerInfo
from prfaas.router.kv_index import CacheEvent, KvIndexBackend, KvIndexUnavailableError
from prfaas.router.types import ClusterKind, ClusterView, InstanceView

logger = logging.getLogger(__name__)


class FingerprintConflictError(ValueError):
    """A worker serves other model weights than the rest of the fleet."""


class BlockSizeConflictError(ValueError):
    """A worker's KV block size differs from the fleet's (block hashes would not match)."""


@dataclass
class WorkerRecord:
    info: WorkerInfo
    last_seen_s: float
    num_waiting: int = 0
    num_running: int = 0
    queued_tokens: int = 0  # prompt tokens waiting for prefill, from the last heartbeat
    fallbacks: int = 0
    draining: bool = False
    links: dict[str, LinkReport] = field(default_factory=dict)  # its newest, by link name


class WorkerFleet:
    def __init__(
        self,
        clusters: dict[str, ClusterKind],
        kv_index: KvIndexBackend,
        heartbeat_timeout_s: float = 3.0,
        block_size: int | None = None,
    ) -> None:
        self._clusters = [ClusterView(name, kind) for name, kind in clusters.items()]
        self.kv_index = kv_index
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.workers: dict[str, WorkerRecord] = {}
        # The deployment's block size (its router counts cached tokens in it), when known
        # before any worker registers; else the first registered worker's.
        self._block_size = block_size
        # Requests this gateway sent to each instance and has not seen finish; owned by the
        # gateway's ``Admission`` (``by_instance``), read here as load.
        self.inflight: Mapping[str, int] = {}
        # Called when an instance joins or comes back (registers, heartbeats again after a
        # silence, stops draining): capacity grew, so queued requests may go (``Admission``).
        self.on_capacity: Callable[[], None] = lambda: None
        # Called with every accepted registration (e.g. to point a link emulator at the KV
        # port the worker announced).
        self.on_register: Callable[[WorkerInfo], None] = lambda _info: None

    @property
    def block_size(self) -> int | None:
        """Tokens per KV block: every registered worker reports this one (others are refused)."""
        if self._block_size is not None:
            return self._block_size
        for record in self.workers.values():
            return record.info.block_size
        return None

    @property
    def fingerprint(self) -> str | None:
        for record in self.workers.values():
            return record.info.fingerprint
        return None

    def register(self, info: WorkerInfo) -> None:
        if info.cluster not in {c.name for c in self._clusters}:
            raise ValueError(f"worker {info.name}: unknown cluster {info.cluster!r}")
        # Only live workers vote: after a fleet-wide weight update the old workers stop
        # heartbeating, and the first new one to register forgets them (and their blocks).
        for name in [n for n in self.workers if n != info.name and not self.healthy(n)]:
            if self.workers[name].info.fingerprint != info.fingerprint:
                self.forget(name)
        others = {r.info.fingerprint for n, r in self.workers.items() if n != info.name}
        if others and info.fingerprint not in others:
            raise FingerprintConflictError(
                f"worker {info.name} serves model {info.fingerprint[:12]}…, the fleet "
                f"{sorted(others)[0][:12]}…"
            )
        sizes = {r.info.block_size for n, r in self.workers.items() if n != info.name}
        if self._block_size is not None:
            sizes = {self._block_size}
        if sizes and info.block_size not in sizes:
            raise BlockSizeConflictError(
                f"worker {info.name} uses KV blocks of {info.block_size} tokens, the fleet "
                f"{min(sizes)}: every instance of a model must use the same block size"
            )
        self.workers[info.name] = WorkerRecord(info, time.monotonic())
        # Unreachable shared index: routable without affinity; the worker's batches answer
        # "unknown" once it is back, and the worker registers again.
        with contextlib.suppress(KvIndexUnavailableError):
            self.kv_index.register(info.name, info.cluster, info.epoch, info.hybrid)
        logger.info(
            "worker %s registered: %s in %s (epoch %d)",
            info.name,
            info.role,
            info.cluster,
            info.epoch,
        )
        self.on_register(info)
        self.on_capacity()

    def heartbeat(self, hb: Heartbeat) -> bool:
        """Apply a heartbeat; False if the worker must register (again). Raises
        ``KvIndexUnavailableError`` after taking the liveness part if its events could not
        reach the kv index: the worker keeps the batch and sends it again."""
        record = self.workers.get(hb.name)
        if record is None or record.info.epoch != hb.epoch or record.info.role != hb.role:
            return False
        came_back = not self.healthy(hb.name) or (record.draining and not hb.draining)
        record.last_seen_s = time.monotonic()
        record.num_waiting, record.num_running = hb.num_waiting, hb.num_running
        record.fallbacks = hb.fallbacks
        record.queued_tokens = hb.queued_tokens
        record.draining = hb.draining
        record.links = {report.link: report for report in hb.links}
        if came_back:
            self.on_capacity()
        if hb.events:
            events: list[CacheEvent] = [
                (bytes.fromhex(e.block_hash), e.stored, e.snapshot) for e in hb.events
            ]
            if self.kv_index.apply(hb.name, hb.epoch, hb.seq, events) == "unknown":
                return False  # e.g. a restarted shared index: registering again restores it
        return True

    def healthy(self, name: str) -> bool:
        record = self.workers.get(name)
        return record is not None and (
            time.monotonic() - record.last_seen_s <= self.heartbeat_timeout_s
        )

    def cluster_at(self, url: str) -> str | None:
        """The cluster of the registered worker whose control URL ``url`` starts with: the
        name its certificate must prove when the gateway calls it."""
        for record in self.workers.values():
            base = record.info.http_url
            if url == base or url.startswith(base + "/"):
                return record.info.cluster
        return None

    def forget(self, name: str) -> None:
        self.workers.pop(name, None)
        self.kv_index.remove(name)

    # -- router.FleetView --------------------------------------------------------------------

    def clusters(self) -> Sequence[ClusterView]:
        return self._clusters

    def instances(self) -> Sequence[InstanceView]:
        return [
            InstanceView(
                name=name,
                cluster=r.info.cluster,
                role=r.info.role,
                load=max(r.num_waiting + r.num_running, self.inflight.get(name, 0)),
                queued_tokens=r.queued_tokens,
                healthy=self.healthy(name) and not r.draining,
            )
            for name, r in self.workers.items()
        ]
