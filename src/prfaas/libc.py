"""The C library, for the few calls prfaas makes past Python's standard library (glibc's
allocator settings and heap trims, for the engine in ``engine.host_memory`` and the gateway
in ``deploy.run``, and its heap statistics for a worker's check; Linux's parent-death signal
in ``deploy.launcher``). None where it is not glibc on Linux."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import NamedTuple


@functools.cache
def glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mallopt, libc.malloc_trim, libc.prctl  # noqa: B018  (glibc, not musl)
    except (OSError, AttributeError):
        return None
    return libc


_M_ARENA_MAX = -8
# How often a long-running process hands freed pages back (``trim_heap``): a trim of a 2 GiB
# heap takes milliseconds; a SmolLM2 step ~20 ms, a gateway request ~3 ms of CPU.
TRIM_EVERY_S = 30.0


def cap_arenas(n: int) -> bool:
    """At most ``n`` glibc arenas from now on (``MALLOC_ARENA_MAX``, set from inside): every
    thread otherwise may open one, up to 8 per core, and each keeps what its threads freed.
    False where not glibc."""
    libc = glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, n))


def trim_heap() -> bool:
    """Hand the allocator's free pages back to the OS: glibc's ``malloc_trim(0)``, which
    releases the free pages inside every arena, not only the main heap's top. False where
    not glibc."""
    libc = glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


class _MallInfo2(ctypes.Structure):
    # glibc's ``struct mallinfo2`` (2.33+): every field a size_t, in this order.
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes the arenas took from the OS (not mmapped chunks)
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in chunks served by their own mmap
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes in chunks handed out and not yet freed
            "fordblks",  # bytes in free chunks (resident or not: a trim only unmaps pages)
            "keepcost",
        )
    ]


class HeapBytes(NamedTuple):
    """What glibc's allocator holds, over every arena: ``in_use`` is live allocations (the
    mmapped ones included), ``free`` the free chunks it keeps (resident or trimmed),
    ``mmapped`` the chunks served by their own mmap."""

    in_use: int
    free: int
    mmapped: int


def heap_bytes() -> HeapBytes | None:
    """glibc's ``mallinfo2`` (it walks every arena under its lock: milliseconds, not for a
    hot path). None where not glibc 2.33 or later."""
    libc = glibc()
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return HeapBytes(in_use=info.uordblks + info.hblkhd, free=info.fordblks, mmapped=info.hblkhd)
