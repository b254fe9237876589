"""Count a tensor's reads back to the host (``item``, ``tolist``, ``bool``, ``float``, ...).

On an accelerator each such read waits for the device to finish what was queued before it;
on a CPU it costs nothing, so a test on a CPU counts them instead of timing them. The count
covers every tensor method through which Python code can see a tensor's value; a read from
C++ (e.g. ``torch.nonzero`` sizing its output, a ``repeat_interleave`` without output size)
is not seen, so the code under test is also written to avoid those by construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


@contextmanager
def count_host_reads() -> Iterator[list[str]]:
    """Yields a list that collects one entry (the method's name) per read in the block."""
    reads: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in _METHODS}

    def counting(name: str) -> Any:
        original = saved[name]

        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            reads.append(name)
            return original(self, *args, **kwargs)

        return wrapper

    for name in _METHODS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield reads
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
