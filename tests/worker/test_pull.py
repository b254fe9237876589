"""A cache pull that fails holds nothing: the reference engine's real receiver, a
hand-driven sender that is admitted (its buffers allocated) and then goes quiet, and a pull
whose deadline passes first. The buffers are freed when the pull gives up, not when the
receiver's own stall deadline fires, and a late send for that pull is refused. Also: the
receiver's byte budgets come from the engine's pool and from what a transfer really carries."""

from __future__ import annotations

import asyncio
import socket

from prfaas.engine.engine import Engine
from prfaas.messages import MAX_LOGPROBS, PullCommand
from prfaas.prefill.kv_export import max_side_bytes, stream_header
from prfaas.transfer.messages import DType, Hello, LayerEntry, LayerKind, TransferHeader
from prfaas.transfer.wire import FrameType, frame_bytes, read_control_frame
from prfaas.worker import Worker
from prfaas.worker.reference import ReferenceEngine, largest_request_bytes, pool_bytes

from .test_reference_engine import PROMPT, engines, run

__all__ = ["engines"]  # the fixture, used by name


def _admitted(address: tuple[str, int], header: TransferHeader) -> socket.socket:
    sock = socket.create_connection(address, timeout=5)
    hello = Hello(header.request_id, 0, 1, 0, False).encode()
    sock.sendall(
        frame_bytes(FrameType.HELLO, hello) + frame_bytes(FrameType.HEADER, header.encode())
    )
    frame_type, _ = read_control_frame(sock, FrameType.READY)
    assert frame_type == FrameType.READY
    return sock


def test_a_pull_past_its_deadline_frees_its_receive_buffer(engines: tuple[Engine, Engine]) -> None:
    run(engines, pull_frees)


async def pull_frees(p: Worker, d: Worker) -> None:
    assert isinstance(d.engine, ReferenceEngine)
    rx = d.engine.receiver
    entry = LayerEntry("layers.0", LayerKind.BLOCKS, DType.FLOAT16, (4, 2, 16, 4, 32))
    fingerprint = bytes.fromhex(d.engine.facts.fingerprint)
    header = TransferHeader("pull-1", fingerprint, "raw", (entry,), bytes(16))
    sock = _admitted(rx.address, header)
    try:
        assert rx.allocated_bytes == header.raw_bytes
        cmd = PullCommand(
            request_id="pull-1", prompt_token_ids=PROMPT[:64], tenant_salt_hex="", deadline_s=0.3
        )
        result = await d.engine.pull(cmd)
        assert not result.ok and result.error
        # Freed now (the receiver's stall deadline is 10 s away), the sender cut off.
        assert rx.allocated_bytes == 0 and rx.num_transfers == 0
        sock.settimeout(2.0)
        assert sock.recv(1) == b""
    finally:
        sock.close()
    late = socket.create_connection(rx.address, timeout=5)  # a late (re)send is refused
    with late:
        hello = Hello(header.request_id, 0, 1, 0, False).encode()
        late.sendall(
            frame_bytes(FrameType.HELLO, hello) + frame_bytes(FrameType.HEADER, header.encode())
        )
        frame_type, _ = read_control_frame(late, FrameType.READY)
        assert frame_type == FrameType.ERROR
    assert rx.allocated_bytes == 0
    # The receiver closes its end just after it sends ERROR: its connection count drops then.
    for _ in range(100):
        if (await d.check()).idle_clean:
            break
        await asyncio.sleep(0.05)
    assert (await d.check()).idle_clean


def test_the_receiver_budgets_come_from_the_pool(engines: tuple[Engine, Engine]) -> None:
    engine = engines[1]
    largest = largest_request_bytes(engine)
    assert 0 < largest < 64 << 20  # 64 blocks of a tiny model, not the old fixed 32 GiB
    # The longest prompt with echo + logprobs at the most alternatives, as the prefill side
    # declares it: exactly the per-transfer budget (the old fixed 64 KiB slack beyond the KV
    # was short: one prompt-logprob row per prompt token).
    longest = min(engine.kv.pool.num_blocks * engine.kv.block_size, engine.max_model_len)
    header = stream_header(
        engine.layout,
        engine.fingerprint,
        engine.dtype,
        longest,
        "longest",
        "raw",
        bytes(16),
        logprobs=MAX_LOGPROBS,
        prompt_logprobs=MAX_LOGPROBS,
    )
    assert header.raw_bytes <= largest  # equal when the length is whole blocks
    assert max_side_bytes(longest) > 64 << 10

    async def body(p: Worker, d: Worker) -> None:
        assert isinstance(d.engine, ReferenceEngine)
        config = d.engine.receiver.config
        assert config.max_transfer_bytes == largest
        # About what the pool holds (decode reserves before its KV is sent), at least two.
        assert config.max_total_bytes == max(2 * largest, pool_bytes(engine))

    run(engines, body)
