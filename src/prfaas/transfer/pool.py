"""Receive arenas, recycled: fresh memory costs a page fault and a zeroed page per 4 KiB
(on this class of machine that was a third of the receiver's CPU), so freed arenas are kept,
up to ``max_bytes``, and handed to the next transfer of a similar size.

An arena is one flat uint8 array; a landing carves its layers out of it. The caller must
not touch an arena's arrays after giving it back.
"""

from __future__ import annotations

import threading

import numpy as np

GRANULE_BYTES = 1 << 20
ALIGN_BYTES = 64


def carve(arena: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Consecutive 64-byte-aligned uint8 views of ``arena`` with the given sizes."""
    views, offset = [], 0
    for size in sizes:
        views.append(arena[offset : offset + size])
        offset += -(-size // ALIGN_BYTES) * ALIGN_BYTES
    return views


def arena_bytes(sizes: list[int]) -> int:
    return sum(-(-size // ALIGN_BYTES) * ALIGN_BYTES for size in sizes)


class BufferPool:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []

    @property
    def pooled_bytes(self) -> int:
        with self._lock:
            return sum(a.nbytes for a in self._free)

    def take(self, num_bytes: int) -> np.ndarray:
        """An arena of at least ``num_bytes``: the smallest pooled one within 2x, else new."""
        with self._lock:
            fits = [a for a in self._free if num_bytes <= a.nbytes <= 2 * num_bytes]
            if fits:
                best = min(fits, key=lambda a: a.nbytes)
                self._free = [a for a in self._free if a is not best]
                return best
        rounded = max(GRANULE_BYTES, -(-num_bytes // GRANULE_BYTES) * GRANULE_BYTES)
        return np.empty(rounded, np.uint8)

    def give(self, arena: np.ndarray) -> None:
        with self._lock:
            if sum(a.nbytes for a in self._free) + arena.nbytes <= self.max_bytes:
                self._free.append(arena)
