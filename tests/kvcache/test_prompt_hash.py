"""The prompt hash a KV transfer carries: any difference in the prompt (the partial tail
block included), the model or the tenant changes it; a prompt ending on a block boundary
hashes to its last block's hash."""

from __future__ import annotations

import pytest

from prfaas.kvcache.hashing import HASH_BYTES, block_hashes, prompt_hash, root_hash

ROOT = root_hash("model-a", b"tenant-1")
PROMPT = list(range(3, 3 + 37))  # 2 full blocks of 16 and a tail of 5


def test_every_token_counts_the_tail_included() -> None:
    h = prompt_hash(PROMPT, 16, ROOT)
    assert len(h) == HASH_BYTES
    for i in (0, 20, 36):  # a token of the first block, of the second, of the tail
        other = [*PROMPT]
        other[i] += 1
        assert prompt_hash(other, 16, ROOT) != h
    assert prompt_hash(PROMPT[:-1], 16, ROOT) != h  # one token shorter
    assert prompt_hash([*PROMPT, 7], 16, ROOT) != h  # one token longer
    assert prompt_hash(PROMPT, 16, root_hash("model-b", b"tenant-1")) != h
    assert prompt_hash(PROMPT, 16, root_hash("model-a", b"tenant-2")) != h


def test_a_whole_number_of_blocks_is_its_last_block_hash() -> None:
    assert prompt_hash(PROMPT[:32], 16, ROOT) == block_hashes(PROMPT[:32], 16, ROOT)[-1]
    assert prompt_hash(PROMPT[:5], 16, ROOT) != ROOT  # a prompt shorter than a block


def test_an_empty_prompt_has_no_hash() -> None:
    with pytest.raises(ValueError, match="empty"):
        prompt_hash([], 16, ROOT)
