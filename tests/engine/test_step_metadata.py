"""The decode rows' context slots, built for all rows at once from their block tables, equal
the per-row reference (``slot_ids`` of positions ``[0, len)``), padded with slot 0."""

from __future__ import annotations

import random

import numpy as np
import pytest

from prfaas.engine.runner import context_slots, padded_tables, slot_ids


@pytest.mark.parametrize("seed", range(20))
def test_context_slots_equal_per_row_slot_ids(seed: int) -> None:
    rng = random.Random(seed)
    block_size = rng.choice([1, 4, 16])
    lens = [rng.randint(1, 200) for _ in range(rng.randint(1, 12))]
    # Tables may hold blocks beyond the context (allocated ahead for the next tokens).
    tables = [rng.sample(range(500), -(-n // block_size) + rng.randint(0, 2)) for n in lens]
    lens_np = np.asarray(lens)
    slots, valid = context_slots(padded_tables(tables, lens_np, block_size), lens_np, block_size)
    assert slots.shape == valid.shape == (len(lens), max(lens))
    for i, (table, n) in enumerate(zip(tables, lens, strict=True)):
        assert valid[i].tolist() == [True] * n + [False] * (max(lens) - n)
        assert slots[i, :n].tolist() == slot_ids(table, block_size, 0, n).tolist()
        assert not slots[i, n:].any()
