"""Prefix-cache events for the kv index, under prfaas's salted block hashes, from vLLM's own
KV events.

vLLM publishes what its prefix cache does (kv_event_feed.py reads it): ``BlockStored`` (full
blocks now cached: their vLLM hashes, the parent block's vLLM hash, their token ids, and per
block the extra keys vLLM hashed, the first block's holding the request's ``cache_salt``),
``BlockRemoved`` (evicted) and ``AllBlocksCleared``. prfaas keys the same blocks by the
``kvcache.hashing`` chain under ``root_hash(fingerprint, tenant salt)``, so each stored block's
prfaas hash is its parent's prfaas hash (the root for a first block, under the salt its extra
keys name) chained with its tokens; this class keeps vLLM hash -> prfaas hash for the blocks
vLLM holds, and answers a removal with the prfaas hash it stored. A block whose parent was
never seen (its store event was lost) cannot be placed and is not reported, nor are the
blocks after it in that event. Plain Python: no vLLM, no torch, no sockets.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from prfaas.integrations.vllm.params import salt_bytes
from prfaas.kvcache.hashing import BlockHash, block_hash, root_hash
from prfaas.messages import CacheEventMsg

MAX_PENDING = 65536


class CacheReport:
    def __init__(self, fingerprint: str, block_size: int) -> None:
        self.fingerprint, self.block_size = fingerprint, block_size
        self._ours: dict[Hashable, BlockHash] = {}  # vLLM's hash -> ours, blocks vLLM holds
        self._pending: list[CacheEventMsg] = []

    @property
    def num_blocks(self) -> int:
        """Blocks vLLM's prefix cache holds, as its events told."""
        return len(self._ours)

    def stored(
        self,
        block_hashes: Sequence[Hashable],
        parent: Hashable | None,
        token_ids: Sequence[int],
        extra_keys: Sequence[tuple[Any, ...] | None] | None,
        block_size: int,
    ) -> None:
        """vLLM cached ``block_hashes`` (their tokens concatenated in ``token_ids``)."""
        if block_size != self.block_size:
            raise ValueError(f"vLLM stored blocks of {block_size} tokens, not {self.block_size}")
        for i, vllm_hash in enumerate(block_hashes):
            if parent is None:
                keys = extra_keys[i] if extra_keys else None
                prev = root_hash(self.fingerprint, salt_bytes(_cache_salt(keys)))
            elif parent in self._ours:
                prev = self._ours[parent]
            else:
                return  # the parent's store was never seen: this chain cannot be placed
            tokens = token_ids[i * block_size : (i + 1) * block_size]
            ours = block_hash(prev, tokens)
            if vllm_hash not in self._ours:
                self._ours[vllm_hash] = ours
                self._add(CacheEventMsg(block_hash=ours.hex(), stored=True))
            parent = vllm_hash

    def removed(self, block_hashes: Sequence[Hashable]) -> None:
        for vllm_hash in block_hashes:
            ours = self._ours.pop(vllm_hash, None)
            if ours is not None:
                self._add(CacheEventMsg(block_hash=ours.hex(), stored=False))

    def cleared(self) -> None:
        self.removed(list(self._ours))

    def _add(self, event: CacheEventMsg) -> None:
        self._pending.append(event)
        if len(self._pending) > MAX_PENDING:  # nobody drains: keep the newest
            del self._pending[: len(self._pending) - MAX_PENDING]

    def drain(self) -> list[CacheEventMsg]:
        events, self._pending = self._pending, []
        return events


def _cache_salt(keys: tuple[Any, ...] | None) -> str | None:
    """The ``cache_salt`` among a first block's extra keys: the one string (a prfaas worker
    passes no LoRA, multimodal input or prompt embeddings, the other keys vLLM may add)."""
    strings = [k for k in keys or () if isinstance(k, str)]
    if len(strings) > 1:
        raise ValueError(f"cannot tell the cache salt among a block's extra keys {keys!r}")
    return strings[0] if strings else None
