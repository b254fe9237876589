"""The worker's view of its connector's hand-offs: the connector runs inside vLLM's engine
process and appends one JSON line per ended hand-off to its ``events_file`` (events.py); the
worker reads the new lines and learns, per transfer id, whether a send was acknowledged or a
load landed, and what the receiver still holds.

Read-only and bounded: a line over ``MAX_LINE_BYTES`` or that does not parse is skipped with
a warning; at most ``MAX_REMEMBERED`` outcomes are kept (oldest dropped first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from pathlib import Path

from prfaas.integrations.vllm.events import HandoffEvent

logger = logging.getLogger(__name__)
MAX_LINE_BYTES = 64 << 10
MAX_REMEMBERED = 4096
POLL_S = 0.01


class HandoffLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self._outcomes: OrderedDict[tuple[str, str], HandoffEvent] = OrderedDict()
        self.num_load_failures = 0
        self.held_bytes = 0  # receive buffers the decode side held after its last load

    def poll(self) -> None:
        """Take in the lines appended since the last call."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > MAX_LINE_BYTES:
            logger.warning("%s: dropping an over-long line", self.path)
            self._partial = b""
        for line in lines:
            self._take(line)

    def _take(self, line: bytes) -> None:
        try:
            event = HandoffEvent(**json.loads(line))
        except (ValueError, TypeError) as e:
            logger.warning("%s: unreadable hand-off line: %s", self.path, e)
            return
        if event.side == "load":
            self.held_bytes = event.held_bytes
            self.num_load_failures += not event.ok
        self._outcomes[(event.transfer_id, event.side)] = event
        while len(self._outcomes) > MAX_REMEMBERED:
            self._outcomes.popitem(last=False)

    def get(self, transfer_id: str, side: str) -> HandoffEvent | None:
        self.poll()
        return self._outcomes.get((transfer_id, side))

    async def wait(self, transfer_id: str, side: str, timeout_s: float) -> HandoffEvent | None:
        """The outcome of ``transfer_id`` on ``side`` ("send" or "load"); None if it has not
        ended within ``timeout_s``."""
        end_s = time.monotonic() + timeout_s
        while (event := self.get(transfer_id, side)) is None:
            if time.monotonic() >= end_s:
                return None
            await asyncio.sleep(POLL_S)
        return event
