"""Decode side: wait for a transfer, check it, land its rows in vLLM's blocks, or give up.

One daemon thread per load. It waits on the KvReceiver (bounded by ``load_timeout_s``),
checks the header's prompt hash against its own hash of the request's prompt (KV computed
for another prompt, model or tenant never lands) and the header against this instance's KV
layout, scatters rows [start, end) of every
layer into the request's blocks, and releases the receive buffers. Any failure abandons the
transfer (the receiver frees what it holds and refuses a late resend) and reports the
request's blocks as load errors, so vLLM recomputes them. A load always ends: landed,
failed, or abandoned when vLLM finishes the request first.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from prfaas.integrations.vllm.events import EventLog, HandoffEvent
from prfaas.integrations.vllm.layout import TORCH_TO_WIRE, BlockLayout, wire_names
from prfaas.integrations.vllm.metadata import LoadSpec
from prfaas.transfer.errors import TransferError
from prfaas.transfer.messages import LayerKind
from prfaas.transfer.receiver import KvReceiver, ReceivedTransfer

logger = logging.getLogger(__name__)


class LoadRejected(Exception):
    """A complete transfer that is not for this request's prompt or does not fit this
    instance's KV (layout, length, dtype)."""


@dataclass
class LoadOutcomes:
    """Loads that ended, not yet reported to vLLM (under ``lock``)."""

    done: set[str] = field(default_factory=set)  # request ids, landed or failed
    failed_blocks: set[int] = field(default_factory=set)
    num_landed: int = 0
    num_failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> tuple[set[str], set[int]]:
        with self.lock:
            done, blocks = self.done, self.failed_blocks
            self.done, self.failed_blocks = set(), set()
        return done, blocks


class Loader:
    def __init__(
        self,
        receiver: KvReceiver,
        layers: list[torch.Tensor],  # vLLM's cache tensors, in model layer order
        layout: BlockLayout,
        timeout_s: float,
        events: EventLog,
        hash_prompt: Callable[[tuple[int, ...], str | None], bytes],
    ) -> None:
        self.receiver, self.layers, self.layout = receiver, layers, layout
        self.events, self.hash_prompt = events, hash_prompt
        self.timeout_s = timeout_s
        self.outcomes = LoadOutcomes()
        self._active: dict[str, str] = {}  # request id -> transfer id
        self._lock = threading.Lock()

    def start(self, spec: LoadSpec) -> None:
        with self._lock:
            self._active[spec.request_id] = spec.transfer_id
        threading.Thread(
            target=self._run, args=(spec,), name=f"kv-load-{spec.transfer_id}", daemon=True
        ).start()

    def abandon(self, request_ids: set[str]) -> None:
        """vLLM finished these requests (e.g. aborted): stop waiting for their KV."""
        with self._lock:
            transfer_ids = [self._active[r] for r in request_ids if r in self._active]
        for transfer_id in transfer_ids:
            self.receiver.abandon(transfer_id)

    @property
    def num_active(self) -> int:
        with self._lock:
            return len(self._active)

    def _run(self, spec: LoadSpec) -> None:
        started_s = time.monotonic()
        error: Exception | None = None
        try:
            error = self._load(spec)
        except Exception as exc:  # a bug must still end the load, or the request waits
            logger.exception("loading %s failed", spec.transfer_id)
            error = exc
        finally:
            self._finish(spec, error)
        self.events.record(
            HandoffEvent(
                spec.transfer_id,
                "load",
                error is None,
                spec.end - spec.start,
                time.monotonic() - started_s,
                "" if error is None else str(error),
                self.receiver.allocated_bytes,
            )
        )

    def _load(self, spec: LoadSpec) -> Exception | None:
        """Wait, land, release; the error that made it fail, if any."""
        try:
            received = self.receiver.wait(spec.transfer_id, timeout_s=self.timeout_s)
        except TransferError as exc:
            self.receiver.abandon(spec.transfer_id)
            return exc
        try:
            self._land(spec, received)
            return None
        except LoadRejected as exc:
            return exc
        finally:
            with contextlib.suppress(KeyError):  # already freed by a concurrent abandon
                self.receiver.release(spec.transfer_id)

    def _land(self, spec: LoadSpec, received: ReceivedTransfer) -> None:
        if received.header.prompt_hash != self.hash_prompt(spec.prompt_token_ids, spec.cache_salt):
            raise LoadRejected(f"transfer {spec.transfer_id} carries KV for another prompt")
        index = {entry.name: i for i, entry in enumerate(received.header.layers)}
        for layer_index, kv_layer in enumerate(self.layers):
            rows = [
                self._rows(spec, received, index, name, kv_layer.dtype)
                for name in wire_names(layer_index)
            ]
            self.layout.scatter(kv_layer, list(spec.block_ids), 0, rows[0], rows[1])

    def _rows(
        self,
        spec: LoadSpec,
        received: ReceivedTransfer,
        index: dict[str, int],
        name: str,
        dtype: torch.dtype,
    ) -> np.ndarray:
        """Rows [start, end) of wire layer ``name``, checked against this instance's KV."""
        if name not in index:
            raise LoadRejected(f"transfer {spec.transfer_id} lacks layer {name!r}")
        entry = received.header.layers[index[name]]
        want = (self.layout.num_kv_heads, self.layout.head_dim)
        if entry.kind is not LayerKind.BLOCKS or entry.shape[1:] != want:
            raise LoadRejected(f"{name}: {entry.kind.name}{entry.shape}, want rows of {want}")
        if entry.shape[0] < spec.end:
            raise LoadRejected(f"{name}: {entry.shape[0]} tokens, need {spec.end}")
        if entry.dtype is not TORCH_TO_WIRE[dtype]:
            raise LoadRejected(f"{name}: {entry.dtype.name}, this cache holds {dtype}")
        return received.layers[index[name]][spec.start : spec.end]

    def _finish(self, spec: LoadSpec, error: Exception | None) -> None:
        with self._lock:
            self._active.pop(spec.request_id, None)
        with self.outcomes.lock:
            self.outcomes.done.add(spec.request_id)
            if error is None:
                self.outcomes.num_landed += 1
            else:
                self.outcomes.num_failed += 1
                self.outcomes.failed_blocks.update(spec.block_ids)
        if error is None:
            logger.info("KV of %s landed: tokens %d..%d", spec.transfer_id, spec.start, spec.end)
        else:
            logger.warning("KV of %s not loaded, recomputing: %s", spec.transfer_id, error)
