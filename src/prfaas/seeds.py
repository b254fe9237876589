"""Seeds of seeded sampling, shared by the engine's sampler and the API's ``n > 1`` fan-out
(plain Python: the gateway derives a sibling's seed without importing the engine)."""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def step_seed(seed: int, position: int) -> int:
    """The generator seed of a seeded sequence's output position (64-bit mix)."""
    x = (seed * 0x9E3779B97F4A7C15 + position + 1) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, index: int) -> int:
    """The seed of sequence ``index`` of an ``n > 1`` request (index 0 keeps ``seed``)."""
    return seed if index == 0 else step_seed(seed ^ 0x5EED, -index) & ((1 << 63) - 1)
