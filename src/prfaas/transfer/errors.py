"""Typed transfer errors: what callers catch at the transport boundary.

Every failure of a transfer surfaces as one of these; the decode side reacts to any of them
by prefilling locally. Each error has a wire code so the peer can learn why it was refused.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Codes carried by an ERROR frame (see docs/wire-format.md)."""

    INTERNAL = 1
    CORRUPT_FRAME = 2
    FINGERPRINT_MISMATCH = 3
    TIMEOUT = 4
    PEER_GONE = 5
    REFUSED = 6


class TransferError(Exception):
    """Base class of every transfer failure."""

    code: ErrorCode = ErrorCode.INTERNAL


class TransferTimeout(TransferError):
    """A first-byte, stall or total deadline passed."""

    code = ErrorCode.TIMEOUT


class PeerGone(TransferError):
    """The peer closed or reset the connection before the transfer completed."""

    code = ErrorCode.PEER_GONE


class CorruptFrame(TransferError):
    """A frame failed validation: bad magic, version, bound, checksum or sequence."""

    code = ErrorCode.CORRUPT_FRAME


class FingerprintMismatch(TransferError):
    """The payload's model fingerprint is not the one the receiver serves."""

    code = ErrorCode.FINGERPRINT_MISMATCH


class TransferRefused(TransferError):
    """The receiver refused the transfer (capacity or configuration), nothing was allocated."""

    code = ErrorCode.REFUSED


_BY_CODE: dict[ErrorCode, type[TransferError]] = {
    cls.code: cls
    for cls in (
        TransferError,
        TransferTimeout,
        PeerGone,
        CorruptFrame,
        FingerprintMismatch,
        TransferRefused,
    )
}


def error_from_code(code: int, message: str) -> TransferError:
    """The typed error for a wire code; unknown codes become a plain TransferError."""
    try:
        cls = _BY_CODE[ErrorCode(code)]
    except ValueError:
        cls = TransferError
    return cls(message)
