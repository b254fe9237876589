"""One JSON line per ended hand-off, appended to ``events_file`` when configured: what an
instance did with each transfer (sent, landed, or failed and recomputed), for operators
and tests. Lines are whole writes under a lock; the file is opened per write (rare events).
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class HandoffEvent:
    transfer_id: str
    side: str  # "send" (prefill instance) or "load" (decode instance)
    ok: bool
    num_tokens: int  # tokens sent, or tokens landed / to be recomputed
    seconds: float  # send: open to ACK; load: issued to landed or given up
    error: str = ""
    held_bytes: int = 0  # decode side: receive buffers still held after this load ended
    kv_bytes: int = 0  # send side, acknowledged: KV delivered, as stored (before the codec)
    wire_bytes: int = 0  # send side, acknowledged: bytes on the link, after the codec


class EventLog:
    def __init__(self, path: str | None) -> None:
        self._path = None if path is None else Path(path)
        self._lock = threading.Lock()

    def record(self, event: HandoffEvent) -> None:
        if self._path is None:
            return
        line = json.dumps(asdict(event)) + "\n"
        with self._lock, self._path.open("a") as f:
            f.write(line)
