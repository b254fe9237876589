"""Where the engine computes (device, dtype), and the host allocator tuned for CPU inference.

A step allocates and frees activations of megabytes each. glibc serves blocks that large with
``mmap`` and returns them on ``free``, so every step pays page faults on fresh zeroed pages for
every activation (a third of a 2K-token prefill on CPU was elementwise work, much of it that).
Raising the mmap and trim thresholds keeps those blocks in the heap, where the next step
reuses them. It is process-wide and only touches glibc's allocator; elsewhere (musl, macOS)
nothing is done.

The price: freed memory is never handed back, and blocks of every size (activations, KV
payloads of every length a decode worker receives) fragment the heap, so a long-running
worker's RSS creeps up. ``HeapTrim`` hands the free pages back every ``TRIM_EVERY_S``
(``malloc_trim``: the heap's top and the free pages inside it), which bounds RSS by what is
live plus what the last ``TRIM_EVERY_S`` freed; the steps between trims keep their reuse.
"""

from __future__ import annotations

import logging
import time

import torch

from prfaas.libc import TRIM_EVERY_S, glibc, trim_heap

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest block still served from the heap (glibc caps the mmap threshold at 32 MiB on
# 64-bit when it adjusts it itself; set explicitly, any value up to HEAP_MAX is kept).
_KEEP_BYTES = 1 << 30
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def placement(device: str, dtype: str) -> tuple[torch.device, torch.dtype | None]:
    """The config's device and dtype (None: the checkpoint's). On a CPU device the host
    allocator is tuned as well (``keep_freed_memory``)."""
    resolved = resolve_device(device)
    if resolved.type == "cpu":
        keep_freed_memory()
    return resolved, None if dtype == "auto" else _DTYPES[dtype]


def keep_freed_memory() -> bool:
    """Returns True when the allocator was tuned."""
    libc = glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
    )
    if not ok:
        logger.debug("mallopt refused the thresholds; host allocator left as it is")
    return ok


class HeapTrim:
    """Hands freed heap pages back to the OS at most every ``every_s`` (call ``tick`` from
    the thread that steps the engine, between steps). Does nothing where the allocator was
    not tuned (a GPU device, not glibc)."""

    def __init__(self, device: torch.device, every_s: float = TRIM_EVERY_S) -> None:
        self._enabled = device.type == "cpu" and glibc() is not None
        self._every_s = every_s
        self._next_s = time.monotonic() + every_s
        self.trims = 0

    def tick(self) -> None:
        if not self._enabled or time.monotonic() < self._next_s:
            return
        trim_heap()
        self.trims += 1
        self._next_s = time.monotonic() + self._every_s
