"""End-to-end transfers on loopback: striping, out-of-order layers, codecs, admission."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from prfaas.transfer.config import ReceiverConfig
from prfaas.transfer.errors import FingerprintMismatch, TransferError, TransferRefused
from prfaas.transfer.messages import TransferHeader
from prfaas.transfer.receiver import KvReceiver
from prfaas.transfer.tls import PLAINTEXT

from .conftest import FAST, FINGERPRINT, make_payload, make_sender


class Recorder:
    def __init__(self) -> None:
        self.layers: list[int] = []
        self.completed: list[str] = []
        self.failed: list[str] = []

    def on_layer(self, request_id: str, layer: int) -> None:
        self.layers.append(layer)

    def on_complete(self, request_id: str) -> None:
        self.completed.append(request_id)

    def on_failed(self, request_id: str, error: Exception) -> None:
        self.failed.append(request_id)


def test_layers_out_of_order_across_connections_land_exactly() -> None:
    header, arrays = make_payload(num_full=8, num_blocks=40)
    recorder = Recorder()
    config = ReceiverConfig(fingerprint=FINGERPRINT, deadlines=FAST)
    with KvReceiver(config, tls=PLAINTEXT, listener=recorder) as rx:
        sender = make_sender(connections=4, chunk_bytes=16 << 10)  # several chunks per layer
        transfer = sender.open(rx.address, header)
        order = np.random.default_rng(1).permutation(len(arrays))
        for index in order:  # as a producer would: whenever a layer is ready
            transfer.send_layer(int(index), arrays[index])
            time.sleep(0.002)
        stats = transfer.finish()
        got = rx.wait(header.request_id, timeout_s=5)
        for sent, landed in zip(arrays, got.layers, strict=True):
            assert landed.dtype == sent.dtype and np.array_equal(landed, sent)
        assert stats.raw_bytes == header.raw_bytes
        assert sorted(recorder.layers) == list(range(len(arrays)))
        deadline_s = time.monotonic() + 2  # on_complete runs after the ACK, maybe after wait
        while not recorder.completed and time.monotonic() < deadline_s:
            time.sleep(0.01)
        assert recorder.completed == [header.request_id]
        assert rx.allocated_bytes == header.raw_bytes  # held for the consumer until release
        rx.release(header.request_id)
        assert rx.allocated_bytes == 0 and rx.num_transfers == 0


def test_receiver_lands_layers_before_the_sender_finishes(receiver: KvReceiver) -> None:
    """Layer-wise streaming: layer 0 is complete at the receiver while layer 1 is not sent."""
    header, arrays = make_payload(num_full=2, num_linear=0)
    landed = threading.Event()

    class Listener(Recorder):
        def on_layer(self, request_id: str, layer: int) -> None:
            if layer == 0:
                landed.set()

    with KvReceiver(
        ReceiverConfig(fingerprint=FINGERPRINT, deadlines=FAST), tls=PLAINTEXT, listener=Listener()
    ) as rx:
        transfer = make_sender().open(rx.address, header)
        transfer.send_layer(0, arrays[0])
        assert landed.wait(2.0)
        transfer.send_layer(1, arrays[1])
        transfer.finish()
        rx.wait(header.request_id, 2.0)
        rx.release(header.request_id)


@pytest.mark.parametrize("codec", ["int8", "fp8+zstd", "raw+lz4"])
def test_codecs_end_to_end_keep_states_exact(receiver: KvReceiver, codec: str) -> None:
    header, arrays = make_payload(codec=codec)
    stats = make_sender(codec=codec).send(receiver.address, header, arrays)
    got = receiver.wait(header.request_id, 5)
    for entry, sent, landed in zip(header.layers, arrays, got.layers, strict=True):
        if entry.kind.name == "STATE" or codec.startswith("raw"):
            assert np.array_equal(landed, sent)  # states always travel losslessly
        else:
            err = np.abs(landed.astype(np.float32) - sent.astype(np.float32)).max()
            assert 0 < err < 0.3
    if codec.startswith(("int8", "fp8")):
        assert stats.wire_bytes < 0.6 * stats.raw_bytes
    receiver.release(header.request_id)


def test_bfloat16_travels_as_bits(receiver: KvReceiver) -> None:
    header, arrays = make_payload(num_full=1, num_linear=0)
    entry = header.layers[0]
    bf16_entry = type(entry)(entry.name, entry.kind, type(entry.dtype).BFLOAT16, entry.shape)
    bf16 = (arrays[0].astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    header = TransferHeader(
        header.request_id, FINGERPRINT, "int8", (bf16_entry,), header.prompt_hash
    )
    make_sender(codec="int8").send(receiver.address, header, [bf16])
    got = receiver.wait(header.request_id, 5).layers[0]
    as_f32 = (got.astype(np.uint32) << 16).view(np.float32)
    ref = (bf16.astype(np.uint32) << 16).view(np.float32)
    assert np.abs(as_f32 - ref).max() < 0.05
    receiver.release(header.request_id)


def test_fingerprint_mismatch_is_refused_before_allocation(receiver: KvReceiver) -> None:
    header, arrays = make_payload()
    stale = TransferHeader(
        header.request_id, b"model-v0", header.codec, header.layers, header.prompt_hash
    )
    with pytest.raises(FingerprintMismatch):
        make_sender().send(receiver.address, stale, arrays)
    assert receiver.allocated_bytes == 0 and receiver.num_transfers == 0


def test_oversized_transfer_is_refused() -> None:
    header, arrays = make_payload()
    config = ReceiverConfig(
        fingerprint=FINGERPRINT, deadlines=FAST, max_transfer_bytes=header.raw_bytes - 1
    )
    with KvReceiver(config, tls=PLAINTEXT) as rx:
        with pytest.raises(TransferRefused):
            make_sender().send(rx.address, header, arrays)
        assert rx.allocated_bytes == 0


def test_concurrent_transfers_share_one_sender(receiver: KvReceiver) -> None:
    sender = make_sender(connections=2)
    payloads = [make_payload(f"req-{i}", seed=i) for i in range(3)]
    threads = [
        threading.Thread(target=sender.send, args=(receiver.address, h, a)) for h, a in payloads
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for header, arrays in payloads:
        got = receiver.wait(header.request_id, 5)
        assert all(np.array_equal(g, a) for g, a in zip(got.layers, arrays, strict=True))
        receiver.release(header.request_id)
    stats = sender.link.stats()
    assert stats.transfers_ok == 3 and stats.bytes_sent > 0
    assert stats.rtt_ms is not None


def test_leaving_a_transfer_unfinished_aborts_it(receiver: KvReceiver) -> None:
    header, arrays = make_payload()
    with make_sender().open(receiver.address, header) as transfer:
        transfer.send_layer(0, arrays[0])  # and then the producer fails
    with pytest.raises(TransferError):
        receiver.wait(header.request_id, timeout_s=3)  # parked 0.5 s, then freed
    assert receiver.allocated_bytes == 0
