"""Block hashes: the one key derivation every tier uses (engine prefix cache, kv index, transfer).

A prompt is cut into full blocks of ``block_size`` tokens. Block ``i``'s hash chains on
block ``i-1``'s; block 0 chains on a *root* that mixes in the model fingerprint and the
tenant's salt. So two prompts share a block hash only if they share the whole prefix up to
and including that block, under the same model weights and the same tenant. The salt is
derived by the gateway from the authenticated tenant and is never taken from a client.

Hashes are 16-byte BLAKE2b digests: stable across processes and machines (unlike ``hash()``),
and wide enough that collisions are not a practical concern.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

BlockHash = bytes

HASH_BYTES = 16
_ROOT_DOMAIN = b"prfaas-root-v1"
_BLOCK_DOMAIN = b"prfaas-block-v1"


def root_hash(model_fingerprint: str, tenant_salt: bytes = b"") -> BlockHash:
    """The parent of block 0: binds every key to one model's weights and one tenant."""
    h = hashlib.blake2b(digest_size=HASH_BYTES, person=b"prfaas-root")
    h.update(_ROOT_DOMAIN)
    fingerprint = model_fingerprint.encode()
    h.update(struct.pack("<I", len(fingerprint)))
    h.update(fingerprint)
    h.update(struct.pack("<I", len(tenant_salt)))
    h.update(tenant_salt)
    return h.digest()


def block_hash(parent: BlockHash, token_ids: Sequence[int]) -> BlockHash:
    """The hash of one full block given its parent's hash."""
    h = hashlib.blake2b(digest_size=HASH_BYTES, person=b"prfaas-block")
    h.update(_BLOCK_DOMAIN)
    h.update(parent)
    h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    return h.digest()


def block_hashes(
    token_ids: Sequence[int],
    block_size: int,
    root: BlockHash,
    start: int = 0,
    parent: BlockHash | None = None,
) -> list[BlockHash]:
    """Hashes of the full blocks of ``token_ids``; the partial tail block has none.

    ``start`` (a block index) and ``parent`` let a caller extend an existing chain: the
    result then holds hashes for blocks ``start, start + 1, ...`` only.
    """
    hashes: list[BlockHash] = []
    prev = root if parent is None else parent
    num_full = len(token_ids) // block_size
    for i in range(start, num_full):
        prev = block_hash(prev, token_ids[i * block_size : (i + 1) * block_size])
        hashes.append(prev)
    return hashes


def prompt_hash(token_ids: Sequence[int], block_size: int, root: BlockHash) -> BlockHash:
    """The hash of a whole prompt: the chain of ``block_hashes`` continued over the partial
    tail block, if any (hashed like a block, chained on the last full one). Two prompts
    share it only if every token, the model and the tenant are the same; it travels in
    every KV transfer's header so that a decode instance lands only KV computed for the
    exact prompt it reserved for."""
    if not token_ids:
        raise ValueError("an empty prompt has no hash")
    full = block_hashes(token_ids, block_size, root)
    last = full[-1] if full else root
    tail = token_ids[len(full) * block_size :]
    return block_hash(last, tail) if tail else last
