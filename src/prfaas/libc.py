"""The C library, for the few calls prfaas makes past Python's standard library (glibc's
allocator settings in ``engine.host_memory``, Linux's parent-death signal in
``deploy.launcher``). None where it is not glibc on Linux."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


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
