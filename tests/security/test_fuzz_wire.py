"""A short run of the wire fuzz harness (benchmarks/fuzz_wire.py: the frame parser, AUTH and
the registration/heartbeat decoders): only typed refusals, a bounded allocation peak. The
benchmark runs the same harness for 1M inputs."""

from __future__ import annotations

import pytest
from benchmarks.fuzz_wire import PEAK_BOUND_BYTES, FuzzCrash, parse_frames, run

from prfaas.transfer.errors import CorruptFrame
from prfaas.transfer.wire import FrameHeader, FrameType


def test_short_fuzz_run_only_refuses() -> None:
    report = run(1_000_000, seed=7, max_seconds=5.0)
    assert report.inputs >= 5000
    assert 0 < report.peak_bytes <= PEAK_BOUND_BYTES
    targets = {outcome.split(":")[0] for outcome in report.outcomes}
    assert targets == {"frames", "auth", "WorkerInfo", "Heartbeat", "RoleSwitch", "KvFailed"}
    assert any(o.endswith("accepted") for o in report.outcomes)  # mutations keep some valid


def test_harness_reports_a_crash() -> None:
    """The harness itself can fail: an untyped exception from a target is a FuzzCrash."""
    with pytest.raises(CorruptFrame):
        parse_frames(b"PFKV" + bytes(16))
    error = FuzzCrash("frames", b"x", ZeroDivisionError())
    assert "ZeroDivisionError" in str(error) and error.data == b"x"


def test_a_chunk_length_is_never_allocated_before_its_meta() -> None:
    """A CHUNK header claims 60 MiB: the parser reads the 16-byte meta, not the claim."""
    stream = FrameHeader(FrameType.CHUNK, 60 << 20, 0).encode() + bytes(16)
    with pytest.raises(CorruptFrame):  # meta (0, 0, 0): an empty block range
        parse_frames(stream)
