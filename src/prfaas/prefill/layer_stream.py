"""Send a prefill's KV layer by layer while the engine still computes the later layers.

Two threads meet at one bounded queue:

- the engine thread calls ``begin`` and ``layer`` (the ``LayerSink`` of ``Engine``): each
  layer's tensors are copied to host numpy arrays and queued; it never waits (the queue has
  a slot for every item a transfer can produce, so a put never blocks);
- this stream's own thread opens the transfer at the first item, hands each array to
  ``OutgoingTransfer.send_layer`` (codec and pacing apply per chunk, as for a whole
  payload), and, once the role gives it the first token, ``finish``es.

The transfer opens at ``begin``, which the engine calls just before the step that runs the
prompt's last chunk, not when the command arrives: the handshake then overlaps that step,
and the connection never sits idle through the earlier chunks or a wait in the engine's
queue (the receiver's stall deadline would cut it). The header is known before any KV
exists (``kv_export.stream_header``).

Failure: a cut (PeerGone) or stalled transfer is resumed once, like ``KvSender.send``,
from the arrays this stream keeps until the end; any other failure (of any type, a bug
included), the role's deadline or ``abort`` aborts the transfer (the receiver frees what
it holds) and ``finish`` raises a ``TransferError``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from prfaas.messages import KV_FIRST_TOKEN_LAYER
from prfaas.prefill.kv_export import as_numpy, first_token_array
from prfaas.transfer.errors import PeerGone, TransferError, TransferTimeout
from prfaas.transfer.messages import TransferHeader
from prfaas.transfer.sender import Address, KvSender, OutgoingTransfer, TransferStats

logger = logging.getLogger(__name__)

_OPEN = "open"  # the prompt's last chunk is about to run: connect now
_ABORT = "abort"
_Item = str | list[tuple[int, np.ndarray]]


class _Aborted(TransferError):
    """The role gave up on the transfer (its prefill failed or missed the deadline)."""


class LayerStream:
    """One streamed transfer. ``deadline_s``: time.monotonic() instant by which it must be
    acknowledged (also its EDF pacing deadline)."""

    def __init__(
        self,
        sender: KvSender,
        address: Address,
        header: TransferHeader,
        deadline_s: float,
        *,
        retries: int = 1,
    ) -> None:
        self.header = header
        self._sender, self._address, self._deadline_s = sender, address, deadline_s
        self._retries = retries
        self._index = {entry.name: i for i, entry in enumerate(header.layers)}
        # Every item is put once: the open marker, at most one per header layer (a model
        # layer's tensors come as one item), the abort marker; so put_nowait never fails.
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=len(header.layers) + 2)
        self._arrays: dict[int, np.ndarray] = {}  # kept until the end: resume sends from them
        self.first_layer_queued_s: float | None = None  # monotonic: the first KV handed over
        self.stats: TransferStats | None = None
        self.error: TransferError | None = None
        self.sending = False  # the transfer is open and not yet acknowledged or failed
        self._thread = threading.Thread(
            target=self._run, name=f"kv-stream-{header.request_id}", daemon=True
        )
        self._thread.start()

    # ---- the engine thread (LayerSink): copy and queue, never wait ------------------------

    def begin(self) -> None:
        self._put(_OPEN)

    def layer(self, layer_index: int, tensors: list[tuple[str, torch.Tensor]]) -> None:
        try:
            self._put([(self._index[name], as_numpy(t)) for name, t in tensors])
        except Exception:  # a bug (say, header and engine disagree): fail this transfer
            logger.exception("layer %d of %s", layer_index, self.header.request_id)
            self._put(_ABORT)  # never raise into the engine's step

    # ---- the role ---------------------------------------------------------------------------

    def finish(
        self, first_token_id: int, extra: Sequence[tuple[str, np.ndarray]] = ()
    ) -> TransferStats:
        """Queue the first token (and the ``extra`` layers the header declares after it: its
        logprobs), wait for the ACK; a TransferError on any failure. Blocks."""
        first = self._index[KV_FIRST_TOKEN_LAYER], first_token_array(first_token_id)
        self._put([first, *((self._index[name], array) for name, array in extra)])
        self._thread.join(max(0.0, self._deadline_s - time.monotonic()) + 1.0)
        if self._thread.is_alive():  # the transfer's own deadlines bound it; this is a backstop
            self.abort()
            self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.stats is not None
        return self.stats

    def abort(self) -> None:
        """Give up (the prefill failed): the transfer, if open, is aborted. Returns at once."""
        self._put(_ABORT)

    def join(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)

    # ---- the stream thread --------------------------------------------------------------------

    def _put(self, item: _Item) -> None:
        with contextlib.suppress(queue.Full):  # only a second abort can land here
            self._queue.put_nowait(item)

    def _get(self) -> _Item:
        left_s = self._deadline_s - time.monotonic()
        try:
            item = self._queue.get(timeout=max(0.0, left_s))
        except queue.Empty:
            raise _Aborted("deadline passed before the prefill produced every layer") from None
        if item == _ABORT:
            raise _Aborted("aborted: the prefill failed")
        return item

    def _run(self) -> None:
        transfer: OutgoingTransfer | None = None
        try:
            try:
                transfer = self._stream()
                self.stats = transfer.finish()
            except (PeerGone, TransferTimeout) as exc:
                if self._retries < 1:
                    raise
                logger.warning("transfer %s: %s; resuming", self.header.request_id, exc)
                if transfer is not None:
                    transfer.abort()
                self.stats = self._resume()
        except TransferError as exc:
            self.error = exc
        except Exception as exc:  # a bug must still fail the transfer, not hang the role
            logger.exception("layer stream %s failed", self.header.request_id)
            self.error = TransferError(f"layer stream failed: {exc!r}")
        finally:
            self.sending = False
            if self.error is not None and transfer is not None:
                transfer.abort()  # idempotent; the receiver frees or parks what it holds

    def _stream(self) -> OutgoingTransfer:
        """Open at the first item, send every layer as it comes; the transfer, all given."""
        transfer: OutgoingTransfer | None = None
        try:
            while transfer is None or len(self._arrays) < len(self.header.layers):
                item = self._get()
                if transfer is None:
                    transfer = self._sender.open(
                        self._address, self.header, deadline_s=self._deadline_s
                    )
                    self.sending = True
                if isinstance(item, str):  # _OPEN
                    continue
                self._arrays.update(item)  # all of them first: a resume needs every one
                for index, array in item:
                    transfer.send_layer(index, array)
                    if self.first_layer_queued_s is None:
                        self.first_layer_queued_s = time.monotonic()
        except BaseException:  # any failure, not only the transport's: no thread or socket kept
            if transfer is not None:
                transfer.abort()
            raise
        return transfer

    def _resume(self) -> TransferStats:
        """After a cut: wait for the layers still to come, then resend what the receiver
        lacks (it parked the complete layers) on a new attempt."""
        while len(self._arrays) < len(self.header.layers):
            item = self._get()
            if not isinstance(item, str):
                self._arrays.update(item)
        arrays = [self._arrays[i] for i in range(len(self.header.layers))]
        return self._sender.send(
            self._address, self.header, arrays, deadline_s=self._deadline_s, attempt_from=1
        )
