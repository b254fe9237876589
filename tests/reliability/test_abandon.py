"""In-process, over real TCP: KV that arrives after the decode side gave up is never held.

The receiver frees whatever landed for an abandoned request and refuses a late (re)send;
the sender stops at the request's deadline rather than its own (longer) transfer deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from prfaas.transfer.config import Deadlines, ReceiverConfig
from prfaas.transfer.emulator import EmulatorConfig, LinkEmulator
from prfaas.transfer.errors import TransferError, TransferRefused, TransferTimeout
from prfaas.transfer.receiver import KvReceiver
from prfaas.transfer.tls import PLAINTEXT
from tests.transfer.conftest import FAST, FINGERPRINT, make_payload, make_sender

SLOW = Deadlines(first_byte_s=10.0, stall_s=10.0, total_s=60.0)


@pytest.fixture
def receiver() -> Iterator[KvReceiver]:
    config = ReceiverConfig(fingerprint=FINGERPRINT, deadlines=FAST, resume_window_s=5.0)
    with KvReceiver(config, tls=PLAINTEXT) as rx:
        yield rx


def test_a_complete_transfer_nobody_released_is_freed_on_abandon(
    receiver: KvReceiver,
) -> None:
    header, arrays = make_payload("late")
    make_sender().send(receiver.address, header, arrays)
    assert receiver.num_transfers == 1 and receiver.allocated_bytes > 0
    receiver.abandon("late")
    assert receiver.num_transfers == 0 and receiver.allocated_bytes == 0
    with pytest.raises(TransferRefused):
        receiver.wait("late", timeout_s=1.0)


def test_a_send_after_abandon_is_refused_with_nothing_allocated(
    receiver: KvReceiver,
) -> None:
    receiver.abandon("gave-up", "TransferTimeout: no KV within 15 s")
    header, arrays = make_payload("gave-up")
    with pytest.raises(TransferRefused, match=r"abandoned by its consumer \(TransferTimeout"):
        make_sender().send(receiver.address, header, arrays, retries=1)
    assert receiver.num_transfers == 0 and receiver.allocated_bytes == 0


def test_abandon_mid_transfer_frees_it_and_wakes_the_waiter(
    receiver: KvReceiver,
) -> None:
    header, arrays = make_payload("slow", num_full=8, num_blocks=64)
    errors: list[Exception] = []

    def send() -> None:
        try:
            make_sender(rate_gbps=0.01, deadlines=SLOW).send(receiver.address, header, arrays)
        except TransferError as e:
            errors.append(e)

    def wait() -> None:
        try:
            receiver.wait("slow", timeout_s=30.0)
        except TransferError as e:
            errors.append(e)

    threads = [threading.Thread(target=send), threading.Thread(target=wait)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while receiver.num_transfers == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    receiver.abandon("slow")
    for thread in threads:
        thread.join(5)  # well before any of their deadlines
    assert not any(t.is_alive() for t in threads) and len(errors) == 2
    assert receiver.num_transfers == 0 and receiver.allocated_bytes == 0


def test_the_request_deadline_bounds_a_stalled_send(receiver: KvReceiver) -> None:
    header, arrays = make_payload("stalled")
    config = EmulatorConfig(("127.0.0.1", 0), receiver.address, stalls=((0.0, 5.0),))
    with LinkEmulator(config) as emulator:
        start_s = time.monotonic()
        with pytest.raises(TransferTimeout):
            make_sender(deadlines=SLOW).send(
                emulator.address, header, arrays, retries=3, deadline_s=start_s + 1.0
            )
        assert time.monotonic() - start_s < 3.0  # 1 s deadline, not 10 s of stall, no retry
