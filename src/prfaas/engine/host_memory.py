"""Where the engine computes (device, dtype), and the host allocator tuned for CPU inference.

A step allocates and frees activations of megabytes each. glibc serves blocks that large with
``mmap`` and returns them on ``free``, so every step pays page faults on fresh zeroed pages for
every activation (a third of a 2K-token prefill on CPU was elementwise work, much of it that).
Raising the mmap and trim thresholds keeps those blocks in the heap, where the next step
reuses them. It is process-wide and only touches glibc's allocator; elsewhere (musl, macOS)
nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

import torch

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
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
    )
    if not ok:
        logger.debug("mallopt refused the thresholds; host allocator left as it is")
    return ok
