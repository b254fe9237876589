"""vLLM's KV events, read as they are published, into a ``CacheReport``.

vLLM's engine core publishes its prefix cache's events (``vllm.distributed.kv_events``:
``KVEventBatch`` of ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared``, msgpack) on a
ZMQ PUB socket when ``kv_events_config`` is set; launch.py binds it to an ``ipc://`` path in
the worker's private folder. This thread subscribes before the engine starts (ZMQ lets a SUB
connect before the PUB binds, so no event of the engine's life is missed), decodes each
batch and hands its events to the report under a lock; the worker drains the report with
its heartbeat. A sequence gap (vLLM drops events past its queue's high-water mark) is
logged: the kv index may then miss blocks, never invent them. A payload that does not
decode is logged and skipped.
"""

from __future__ import annotations

import logging
import threading

from prfaas.integrations.vllm.cache_report import CacheReport
from prfaas.messages import CacheEventMsg

logger = logging.getLogger(__name__)
POLL_MS = 100  # how often the thread looks at its stop flag
MAX_PAYLOAD_BYTES = 64 << 20  # one batch; vLLM's are a step's events


class KvEventFeed:
    def __init__(self, endpoint: str, report: CacheReport) -> None:
        import zmq

        self.report = report
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.setsockopt(zmq.MAXMSGSIZE, MAX_PAYLOAD_BYTES)
        self._sub.connect(endpoint)
        self._thread = threading.Thread(target=self._run, name="vllm-kv-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import msgspec
        from vllm.distributed.kv_events import (
            AllBlocksCleared,
            BlockRemoved,
            BlockStored,
            KVEventBatch,
        )

        decoder = msgspec.msgpack.Decoder(KVEventBatch)
        last_seq = -1
        while not self._stop.is_set():
            if not self._sub.poll(POLL_MS):
                continue
            frames = self._sub.recv_multipart()
            if len(frames) != 3:
                logger.warning("a vLLM KV event message of %d frames: skipped", len(frames))
                continue
            _, seq_bytes, payload = frames
            seq = int.from_bytes(seq_bytes, "big", signed=True)
            if seq != last_seq + 1:
                logger.warning("vLLM KV events %d..%d were lost", last_seq + 1, seq - 1)
            last_seq = seq
            try:
                batch = decoder.decode(payload)
            except msgspec.DecodeError as e:
                logger.warning("a vLLM KV event batch does not decode (%s): skipped", e)
                continue
            with self._lock:
                for event in batch.events:
                    try:
                        if isinstance(event, BlockStored):
                            self.report.stored(
                                event.block_hashes,
                                event.parent_block_hash,
                                event.token_ids,
                                event.extra_keys,
                                event.block_size,
                            )
                        elif isinstance(event, BlockRemoved):
                            self.report.removed(event.block_hashes)
                        elif isinstance(event, AllBlocksCleared):
                            self.report.cleared()
                    except ValueError as e:  # blocks prfaas cannot key: not reported
                        logger.warning("a vLLM KV event not reported: %s", e)

    def drain(self) -> list[CacheEventMsg]:
        with self._lock:
            return self.report.drain()

    @property
    def num_blocks(self) -> int:
        with self._lock:
            return self.report.num_blocks

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2 * POLL_MS / 1000 + 1.0)
        self._sub.close(linger=0)
        self._ctx.term()
