"""Peer authentication on KV connections: the sender proves it holds the cluster's KV key.

Mutual TLS authenticates peers by certificate; a deployment without certificates still has
the cluster token every worker is started with. From it both ends derive a KV key, and the
sender follows every HELLO with an AUTH frame::

    timestamp_ms: u64 | nonce: 16 bytes | tag: 32 bytes
    tag = HMAC-SHA256(key, LABEL + HELLO payload + timestamp_ms + nonce)

The receiver checks the tag with ``hmac.compare_digest``, the timestamp against a window
(clock skew between datacenters included) and the nonce against the ones it accepted within
that window (a replayed AUTH is refused), all before it reads a HEADER or reserves a byte.
What it does not do: protect the frames after AUTH from an on-path attacker (that is TLS's
job); it keeps out every peer that does not hold the token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
import time
from dataclasses import dataclass

from prfaas.transfer.errors import CorruptFrame, TransferRefused

LABEL = b"prfaas-kv-auth-v1\0"
_KEY_LABEL = b"prfaas kv stream key v1"
_AUTH = struct.Struct("<Q16s32s")
AUTH_BYTES = _AUTH.size  # 56
AUTH_WINDOW_S = 300.0  # accepted |receiver clock - sender clock|
MAX_SEEN_NONCES = 1 << 16  # accepted nonces remembered (only authenticated peers add one)


def kv_auth_key(cluster_token: str) -> bytes:
    """The KV key both ends derive from the cluster token (the token itself never travels)."""
    return hmac.new(cluster_token.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()


def _tag(key: bytes, hello_payload: bytes, timestamp_ms: int, nonce: bytes) -> bytes:
    message = LABEL + hello_payload + struct.pack("<Q", timestamp_ms) + nonce
    return hmac.new(key, message, hashlib.sha256).digest()


@dataclass(frozen=True)
class AuthProof:
    timestamp_ms: int
    nonce: bytes  # 16 random bytes, fresh per connection
    tag: bytes  # 32 bytes

    def encode(self) -> bytes:
        return _AUTH.pack(self.timestamp_ms, self.nonce, self.tag)

    @staticmethod
    def decode(data: bytes) -> AuthProof:
        if len(data) != AUTH_BYTES:
            raise CorruptFrame(f"AUTH payload is {len(data)} bytes, want {AUTH_BYTES}")
        timestamp_ms, nonce, tag = _AUTH.unpack(data)
        return AuthProof(timestamp_ms, nonce, tag)

    @staticmethod
    def prove(key: bytes, hello_payload: bytes) -> AuthProof:
        timestamp_ms, nonce = int(time.time() * 1000), os.urandom(16)
        return AuthProof(timestamp_ms, nonce, _tag(key, hello_payload, timestamp_ms, nonce))


class AuthVerifier:
    """Receiver side. Thread-safe (one verifier serves every connection thread)."""

    def __init__(self, key: bytes, window_s: float = AUTH_WINDOW_S) -> None:
        self._key = key
        self._window_ms = int(window_s * 1000)
        self._seen: dict[bytes, int] = {}  # nonce -> timestamp_ms, within the window
        self._lock = threading.Lock()

    def verify(self, hello_payload: bytes, auth_payload: bytes) -> None:
        """Accept the connection or raise TransferRefused (CorruptFrame if malformed)."""
        proof = AuthProof.decode(auth_payload)
        expected = _tag(self._key, hello_payload, proof.timestamp_ms, proof.nonce)
        if not hmac.compare_digest(expected, proof.tag):
            raise TransferRefused("peer not authenticated: wrong KV key")
        now_ms = int(time.time() * 1000)
        if abs(now_ms - proof.timestamp_ms) > self._window_ms:
            raise TransferRefused("peer not authenticated: AUTH timestamp outside the window")
        with self._lock:
            if proof.nonce in self._seen:
                raise TransferRefused("peer not authenticated: replayed AUTH")
            if len(self._seen) >= MAX_SEEN_NONCES:
                oldest_ms = now_ms - self._window_ms
                self._seen = {n: t for n, t in self._seen.items() if t >= oldest_ms}
                if len(self._seen) >= MAX_SEEN_NONCES:
                    raise TransferRefused("too many connections within the AUTH window")
            self._seen[proof.nonce] = proof.timestamp_ms
