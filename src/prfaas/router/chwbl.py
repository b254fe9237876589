"""Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018).

Each instance owns ``virtual_nodes`` points on a 64-bit ring. A request's affinity key (its
first block hash: requests sharing a prefix share a key) hashes to a point; walking the ring
clockwise, the first instance whose load is below the bound takes it. The bound is
``ceil(balance_factor * (total_load + 1) / num_instances)``: no instance takes more than
``balance_factor`` times the mean, yet a key keeps its instance while that instance is not
hot. Decided per request, never as a fleet-wide mode switch (sglang#14305).

Hashing is ``stable_hash``, not ``hash()``: str/bytes hashing is salted per process, which
would make routing (and the simulator) differ between runs.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Hashable, Iterator, Mapping, Sequence

_MASK64 = (1 << 64) - 1


def stable_hash(key: Hashable) -> int:
    """A 64-bit hash equal across processes and machines."""
    if isinstance(key, int):
        x = (key + 0x9E3779B97F4A7C15) & _MASK64  # splitmix64 finalizer
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        return x ^ (x >> 31)
    data = key if isinstance(key, bytes) else str(key).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class ConsistentHashRing:
    """A ring over a fixed set of instance names; rebuild it when membership changes."""

    def __init__(self, instances: Sequence[str], virtual_nodes: int = 64) -> None:
        if not instances:
            raise ValueError("a ring needs at least one instance")
        points = sorted(
            (stable_hash(f"{name}#{v}"), name) for name in instances for v in range(virtual_nodes)
        )
        self.instances = tuple(sorted(instances))
        self._points = [p for p, _ in points]
        self._owners = [name for _, name in points]

    def walk(self, key: Hashable) -> Iterator[str]:
        """Distinct instances in ring order starting at ``key``'s point (lazily)."""
        start = bisect.bisect_left(self._points, stable_hash(key))
        seen: set[str] = set()
        n = len(self._owners)
        for i in range(n):
            owner = self._owners[(start + i) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self.instances):
                    return


def load_bound(loads: Mapping[str, int], balance_factor: float) -> int:
    """The most requests one instance may hold after taking this one."""
    return max(1, math.ceil(balance_factor * (sum(loads.values()) + 1) / len(loads)))


def pick(ring: ConsistentHashRing, key: Hashable, loads: Mapping[str, int], factor: float) -> str:
    """The first instance on ``key``'s walk whose load stays within the bound."""
    bound = load_bound(loads, factor)
    for name in ring.walk(key):
        if loads[name] + 1 <= bound:
            return name
    return min(ring.instances, key=lambda name: loads[name])  # unreachable when factor >= 1
