"""The engine's host allocator settings (``engine.host_memory``): freed activations stay in
the heap between steps, and ``HeapTrim`` hands them back, so a long-running worker's RSS is
bounded. Run in a child process: the settings are process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHILD = r"""
import json, os, torch
from prfaas.engine.host_memory import HeapTrim, keep_freed_memory

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

tuned = keep_freed_memory()
base = rss_mib()
# Blocks of many sizes, as a decode worker's payloads and activations: allocated, touched, freed.
held = [torch.ones(256 * 1024 * (1 + i % 13)) for i in range(100)]  # 1-13 MiB, ~0.7 GiB
del held
kept = rss_mib()
trim = HeapTrim(torch.device("cpu"), every_s=0.0)
trim.tick()
after = rss_mib()
print(json.dumps(dict(tuned=tuned, base=base, kept=kept, after=after, trims=trim.trims)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux")
def test_freed_memory_stays_until_the_trim_hands_it_back() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True
    )
    r = json.loads(out.stdout)
    assert r["tuned"], r  # glibc took the thresholds
    freed = r["kept"] - r["base"]
    assert freed > 300, r  # the freed blocks stayed resident (no trim, no munmap)
    assert r["trims"] == 1 and r["after"] - r["base"] < 0.2 * freed, r
