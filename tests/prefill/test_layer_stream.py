"""The layer-wise stream over real loopback TCP: a failure that is not the transport's
(here a layer whose shape disagrees with the header, which ``send_layer`` refuses with a
ValueError) still aborts the transfer: no writer thread, socket or open transfer remains,
and the receiver frees what it held."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from prfaas.prefill.layer_stream import LayerStream
from prfaas.transfer.errors import TransferError
from prfaas.transfer.receiver import KvReceiver

from ..transfer.conftest import make_payload, make_sender, receiver

__all__ = ["receiver"]  # the fixture, used by name


def _settle(predicate: object, timeout_s: float = 5.0) -> bool:
    end_s = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > end_s:
            return False
        time.sleep(0.01)
    return True


def test_a_non_transfer_error_aborts_the_stream(receiver: KvReceiver) -> None:
    header, arrays = make_payload(num_linear=0)
    sender = make_sender(connections=3)
    threads_before = threading.active_count()
    stream = LayerStream(sender, receiver.address, header, time.monotonic() + 10.0)
    stream.begin()
    stream.layer(0, [(header.layers[0].name, torch.from_numpy(arrays[0]))])
    assert _settle(lambda: receiver.num_transfers == 1)  # open, admitted, landing
    wrong = torch.from_numpy(np.zeros((1, 2, 3), dtype=np.float16))
    stream.layer(1, [(header.layers[1].name, wrong)])
    stream.join(5.0)
    assert isinstance(stream.error, TransferError) and "ValueError" in str(stream.error)
    assert not stream.sending
    assert sender.link.monitor.stats(None).transfers_open == 0
    assert _settle(lambda: threading.active_count() == threads_before), threading.enumerate()
    assert _settle(lambda: receiver.num_connections == 0)
    assert _settle(lambda: receiver.allocated_bytes == 0 and receiver.num_transfers == 0)
