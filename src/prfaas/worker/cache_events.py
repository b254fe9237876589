"""A worker's cache events in numbered batches, kept until every gateway has taken them.

A worker heartbeats to each gateway it knows on its own schedule. Each batch of events is
numbered once (1, 2, … within an epoch) and sent to every gateway in order; a gateway's
batch leaves the log when that gateway acknowledges it. A kv index applies a batch only if
its number is above the last one applied (``KvIndex.apply``), so a batch that two gateways
deliver to one shared index applies once, and a batch sent again after a lost answer is
harmless.

Invariants: ``_batches`` holds consecutive numbers, oldest first; gateway ``g`` still needs
exactly the batches numbered above ``_acked[g]``. A new epoch (a role switch) starts over:
the index forgets the old epoch's blocks anyway. The log is bounded: a gateway that stays
unreachable loses its oldest batches (a shared index has them from the other gateways).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from prfaas.messages import CacheEventMsg

logger = logging.getLogger(__name__)
MAX_BATCHES = 256  # ~2 minutes of heartbeats that had events
# Events per batch: about 64 bytes of JSON each, so a heartbeat stays near 1 MiB, well
# under the gateway's request-body limit (a full MAX_EVENTS batch would not be).
BATCH_EVENTS = 16384


@dataclass(frozen=True)
class EventBatch:
    seq: int
    events: list[CacheEventMsg]


class CacheEventLog:
    def __init__(self, gateways: Sequence[str], max_batches: int = MAX_BATCHES) -> None:
        self.max_batches = max_batches
        self.epoch: int | None = None
        self._gateways = list(gateways)
        self._batches: deque[EventBatch] = deque()
        self._acked = dict.fromkeys(self._gateways, 0)
        self._next_seq = 1

    def add(self, epoch: int, events: list[CacheEventMsg]) -> None:
        """Number ``events`` (drained from the engine) as the next batch of ``epoch``."""
        if epoch != self.epoch:
            self.epoch, self._next_seq = epoch, 1
            self._batches.clear()
            self._acked = dict.fromkeys(self._gateways, 0)
        for start in range(0, len(events), BATCH_EVENTS):
            self._batches.append(EventBatch(self._next_seq, events[start : start + BATCH_EVENTS]))
            self._next_seq += 1
            if len(self._batches) > self.max_batches:
                lost = self._batches.popleft()
                logger.warning("cache event batch %d dropped: a gateway is unreachable", lost.seq)

    def pending(self, gateway: str, epoch: int) -> list[EventBatch]:
        """The batches ``gateway`` has not acknowledged, in order (none of another epoch)."""
        if epoch != self.epoch:
            return []
        acked = self._acked[gateway]
        return [b for b in self._batches if b.seq > acked]

    def ack(self, gateway: str, epoch: int, seq: int) -> None:
        if epoch != self.epoch:
            return
        self._acked[gateway] = max(self._acked[gateway], seq)
        done = min(self._acked.values())
        while self._batches and self._batches[0].seq <= done:
            self._batches.popleft()
