"""Prefill side: one outgoing transfer per request, fed layer by layer from the forward pass.

The forward thread only copies a layer's rows out of vLLM's cache and queues them
(``put_layer``); a daemon thread per transfer opens the session (connect, TLS, AUTH, header,
READY), hands each layer to ``OutgoingTransfer.send_layer`` and waits for the ACK. A failure
is logged and counted: the decode instance, which never gets the transfer, recomputes.
Each array put is owned by the transfer from then on (sent without a copy).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from prfaas.integrations.vllm.events import EventLog, HandoffEvent
from prfaas.transfer.errors import TransferError
from prfaas.transfer.messages import TransferHeader
from prfaas.transfer.sender import KvSender, TransferStats

logger = logging.getLogger(__name__)

Address = tuple[str, int]


@dataclass
class SendOutcomes:
    """What the prefill instance's transfers came to (read by tests and stats)."""

    sent: list[TransferStats] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # transfer id -> error
    events: EventLog = field(default_factory=lambda: EventLog(None))
    lock: threading.Lock = field(default_factory=threading.Lock)


class LayerStream:
    """One transfer: ``put_layer`` for every header layer, in any order, then it finishes."""

    def __init__(
        self,
        sender: KvSender,
        address: Address,
        header: TransferHeader,
        timeout_s: float,
        outcomes: SendOutcomes,
    ) -> None:
        self.header = header
        self._sender, self._address, self._outcomes = sender, address, outcomes
        self._started_s = time.monotonic()
        self._deadline_s = self._started_s + timeout_s
        self._layers: queue.SimpleQueue[tuple[int, np.ndarray]] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name=f"kv-stream-{header.request_id}", daemon=True
        )
        self._thread.start()

    def put_layer(self, index: int, rows: np.ndarray) -> None:
        self._layers.put((index, rows))

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        transfer_id = self.header.request_id
        try:
            with self._sender.open(
                self._address, self.header, deadline_s=self._deadline_s
            ) as transfer:
                for _ in self.header.layers:
                    left_s = self._deadline_s - time.monotonic()
                    index, rows = self._layers.get(timeout=max(left_s, 0.0))
                    transfer.send_layer(index, rows)
                stats = transfer.finish()
        except (TransferError, queue.Empty, OSError, ValueError) as exc:
            late = isinstance(exc, queue.Empty)
            error = "layers not produced before the deadline" if late else str(exc)
            logger.warning("KV transfer %s to %s failed: %s", transfer_id, self._address, error)
            with self._outcomes.lock:
                self._outcomes.failed[transfer_id] = error
            seconds = time.monotonic() - self._started_s
            self._outcomes.events.record(
                HandoffEvent(transfer_id, "send", False, self._num_tokens, seconds, error)
            )
            return
        logger.info(
            "KV transfer %s: %d bytes in %.3fs", transfer_id, stats.raw_bytes, stats.seconds
        )
        with self._outcomes.lock:
            self._outcomes.sent.append(stats)
        self._outcomes.events.record(
            HandoffEvent(
                transfer_id,
                "send",
                True,
                self._num_tokens,
                stats.seconds,
                kv_bytes=stats.raw_bytes,
                wire_bytes=stats.wire_bytes,
            )
        )

    @property
    def _num_tokens(self) -> int:
        return self.header.layers[0].shape[0] if self.header.layers else 0
