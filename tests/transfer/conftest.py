"""Shared helpers for the transport tests: payloads, receivers, certificates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from prfaas.transfer.config import Deadlines, LinkConfig, ReceiverConfig
from prfaas.transfer.link import Link
from prfaas.transfer.messages import DType, LayerEntry, LayerKind, TransferHeader
from prfaas.transfer.receiver import KvReceiver
from prfaas.transfer.sender import KvSender
from prfaas.transfer.tls import PLAINTEXT, write_certs

FINGERPRINT = b"model-v1"
PROMPT_HASH = bytes(range(16))  # opaque to the transport
FAST = Deadlines(first_byte_s=2.0, stall_s=1.0, total_s=10.0)


def make_payload(
    request_id: str = "req-1",
    codec: str = "raw",
    num_full: int = 6,
    num_blocks: int = 24,
    num_linear: int = 2,
    seed: int = 0,
) -> tuple[TransferHeader, list[np.ndarray]]:
    """A hybrid payload: fp16 KV blocks (num_blocks, 2, 16, 4, 32) per full-attention layer,
    one float32 state (4, 32, 32) per linear layer."""
    rng = np.random.default_rng(seed)
    arrays: list[np.ndarray] = []
    entries: list[LayerEntry] = []
    for i in range(num_full):
        kv = rng.standard_normal((num_blocks, 2, 16, 4, 32), dtype=np.float32).astype(np.float16)
        arrays.append(kv)
        entries.append(LayerEntry(f"full.{i}", LayerKind.BLOCKS, DType.FLOAT16, kv.shape))
    for i in range(num_linear):
        state = rng.standard_normal((4, 32, 32), dtype=np.float32)
        arrays.append(state)
        entries.append(LayerEntry(f"linear.{i}", LayerKind.STATE, DType.FLOAT32, state.shape))
    return TransferHeader(request_id, FINGERPRINT, codec, tuple(entries), PROMPT_HASH), arrays


def make_sender(
    connections: int = 3,
    codec: str = "raw",
    rate_gbps: float | None = None,
    chunk_bytes: int = 64 << 10,
    deadlines: Deadlines = FAST,
) -> KvSender:
    link = Link(
        LinkConfig(
            "test",
            rate_gbps=rate_gbps,
            connections=connections,
            codec=codec,
            chunk_bytes=chunk_bytes,
        )
    )
    return KvSender(link, tls=PLAINTEXT, deadlines=deadlines)


@pytest.fixture
def receiver() -> Iterator[KvReceiver]:
    config = ReceiverConfig(fingerprint=FINGERPRINT, deadlines=FAST, resume_window_s=0.5)
    with KvReceiver(config, tls=PLAINTEXT) as rx:
        yield rx


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("certs")
    write_certs(path, ["prfaas", "pd"])
    return path
