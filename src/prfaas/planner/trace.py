"""Mooncake-format traces and the prefix-hit model that turns prompts into incremental lengths.

A trace line: ``{"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}``
with one hash id per ``block_tokens``-token block of the prompt; equal ids at the same
position mean the same reusable prefix (ids chain on their parents).

Prefix-hit model (requests replayed in arrival order, one shared cache):
- ``none``: nothing is cached; l_inc = input_length.
- ``unbounded``: every block seen before stays cached.
- ``lru``: at most ``capacity_blocks`` blocks, least recently used evicted first.
A hit covers the longest run of leading blocks present in the cache (block granularity, as
the hybrid cache keeps linear-state snapshots only at block boundaries). At least one token is
always recomputed, so l_inc >= 1. The model ignores which cluster holds a prefix: it is the
planner's single-cache approximation of the router's per-cluster lookup.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TraceRequest:
    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


class TraceFormatError(ValueError):
    """A trace line is not a Mooncake request object."""


def load_mooncake_trace(path: str | Path) -> list[TraceRequest]:
    requests = []
    with Path(path).open() as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                requests.append(
                    TraceRequest(
                        timestamp_ms=float(obj["timestamp"]),
                        input_length=int(obj["input_length"]),
                        output_length=int(obj["output_length"]),
                        hash_ids=tuple(int(h) for h in obj.get("hash_ids", ())),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise TraceFormatError(f"{path}:{line_no}: {exc}") from exc
    if not requests:
        raise TraceFormatError(f"{path}: no requests")
    return requests


class _BlockCache:
    def __init__(self, capacity_blocks: int | None) -> None:
        self._capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def hit_blocks(self, hash_ids: Sequence[int]) -> int:
        hits = 0
        for block in hash_ids:
            if block not in self._blocks:
                break
            hits += 1
        return hits

    def insert(self, hash_ids: Iterable[int]) -> None:
        for block in hash_ids:
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while self._capacity is not None and len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)


def incremental_lengths(
    requests: Sequence[TraceRequest],
    prefix_cache: str = "unbounded",
    block_tokens: int = 512,
    capacity_blocks: int | None = None,
) -> list[int]:
    """l_inc per request, in arrival order, under the given prefix-hit model."""
    if prefix_cache not in ("none", "unbounded", "lru"):
        raise ValueError(f"prefix_cache must be none|unbounded|lru, got {prefix_cache!r}")
    if prefix_cache == "lru" and (capacity_blocks is None or capacity_blocks < 1):
        raise ValueError("prefix_cache 'lru' needs capacity_blocks >= 1")
    if prefix_cache == "none":
        return [max(r.input_length, 1) for r in requests]
    cache = _BlockCache(capacity_blocks if prefix_cache == "lru" else None)
    lengths = []
    for request in sorted(requests, key=lambda r: r.timestamp_ms):
        cached_tokens = cache.hit_blocks(request.hash_ids) * block_tokens
        cached_tokens = min(cached_tokens, request.input_length - 1)
        lengths.append(max(request.input_length - cached_tokens, 1))
        cache.insert(request.hash_ids)
    return lengths
