"""glibc's allocator from inside (``prfaas.libc``), as `prfaas serve` sets it for its gateway:
at most ``cap_arenas`` arenas however many threads allocate at once, and ``trim_heap`` hands
what they freed back. Run in child processes: the settings are process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHILD = r"""
import ctypes, json, os, re, sys, tempfile, threading
from prfaas.libc import cap_arenas, glibc, trim_heap

def anon_mib():
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["RssAnon"].split()[0]) / 1024

def arenas():
    libc = glibc()
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile("r") as f:
        fp = libc.fopen(f.name.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        return len(re.findall("<heap nr=", f.read()))

capped = cap_arenas(2) if sys.argv[1] == "cap" else False
# As the link emulator's relays: threads at once, each receiving 256 KiB pieces (kept in the
# heap: glibc raises its mmap threshold to 256 KiB+ after the first such piece is freed).
glibc().mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: the raised threshold, deterministic
barrier = threading.Barrier(12)
kept = []  # small blocks that outlive the pieces between them: the heap cannot shrink

def relay():
    barrier.wait()  # all at once: each thread that finds the arenas busy may open one
    pieces = []
    for _ in range(64):  # 16 MiB, touched
        pieces.append(b"k" * (256 << 10))
        kept.append(b"s" * 1024)
    barrier.wait()
    del pieces

threads = [threading.Thread(target=relay) for _ in range(12)]
for t in threads:
    t.start()
for t in threads:
    t.join()
before = anon_mib()
trimmed = trim_heap()
print(json.dumps(dict(capped=capped, arenas=arenas(), before=before, after=anon_mib(),
                      trimmed=trimmed)))
"""


def child(cap: str) -> dict[str, float]:
    """``cap``: "cap" (two arenas) or "free" (glibc's default, up to 8 per core)."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, cap], capture_output=True, text=True, timeout=120, check=True
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux")
def test_capped_arenas_and_the_trim_bound_what_threads_freed() -> None:
    free = child("free")
    capped = child("cap")
    assert capped["capped"] and capped["trimmed"], capped
    assert free["arenas"] > 2, free  # without the cap the threads opened arenas of their own
    assert capped["arenas"] <= 2, capped
    # The threads freed 12 x 16 MiB between blocks still in use; the two arenas kept much of
    # it, and the trim hands it back.
    assert capped["before"] > 40, capped
    assert capped["after"] < 0.5 * capped["before"], capped


HEAP_CHILD = r"""
import ctypes, json
from prfaas.libc import glibc, heap_bytes

libc = glibc()
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
big = 48 << 20  # above glibc's default mmap threshold: its own mapping
before = heap_bytes()
block = libc.malloc(big)
during = heap_bytes()
libc.free(block)
after = heap_bytes()
# A heap block (past the thread cache's sizes) freed below a block still in use: a free
# chunk, not in use.
low, high = libc.malloc(64 << 10), libc.malloc(1 << 10)
held = heap_bytes()
libc.free(low)
freed = heap_bytes()
libc.free(high)
print(json.dumps(dict(big=big, before=before, during=during, after=after, held=held,
                      freed=freed)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux")
def test_heap_bytes_follow_live_allocations_and_the_free_chunks() -> None:
    """What a worker's check reports beside its RssAnon (benchmarks/soak.py): a block malloc
    hands out counts as in use until it is freed; a heap block freed below a block still in
    use is a free chunk. In a child process: one thread, glibc's default thresholds (an
    engine in this process would have raised the mmap threshold)."""
    out = subprocess.run(
        [sys.executable, "-c", HEAP_CHILD], capture_output=True, text=True, timeout=60, check=True
    )
    r = {
        k: v if k == "big" else dict(zip(("in_use", "free", "mmapped"), v, strict=True))
        for k, v in json.loads(out.stdout).items()
    }
    big, before, during, after = r["big"], r["before"], r["during"], r["after"]
    assert during["in_use"] - before["in_use"] >= big, r
    assert during["mmapped"] - before["mmapped"] >= big, r
    assert during["in_use"] - after["in_use"] >= big, r
    held, freed = r["held"], r["freed"]
    assert freed["free"] - held["free"] >= 64 << 10, r
    assert held["in_use"] - freed["in_use"] >= 64 << 10, r
