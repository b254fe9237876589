"""The block layout probe: rows out of a paged cache and back, token by token.

A fake backend write stands in for vLLM's where vLLM is absent; it stores K transposed
(dim-major) and V row-major inside each block, as vLLM's CPU "vec" kernels do, so a layout
that assumed rows would fail. Where vLLM is installed, the probe also runs against its own
cache-write op, and the gathered rows must be exactly what that op was given.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prfaas.integrations.vllm.layout import BlockLayout, CacheWriter
from tests.integrations.vllm_procs import HAS_VLLM

BLOCK, HEADS, DIM = 32, 3, 64


def fake_write(
    key: torch.Tensor, value: torch.Tensor, kv: torch.Tensor, slots: torch.Tensor
) -> None:
    # per (block, head): K as (dim, block_size), then V as (block_size, dim)
    num_blocks, heads, block_size, _ = kv.shape
    tiles = kv.view(num_blocks, heads, 2, block_size * DIM)
    for row, slot in enumerate(slots.tolist()):
        block, offset = divmod(slot, block_size)
        k_tile = tiles[block, :, 0].view(heads, DIM, block_size)
        v_tile = tiles[block, :, 1].view(heads, block_size, DIM)
        k_tile[:, :, offset] = key[row]
        v_tile[:, offset, :] = value[row]


def vllm_write() -> CacheWriter:
    from vllm import _custom_ops as ops
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    def write(
        key: torch.Tensor, value: torch.Tensor, kv: torch.Tensor, slots: torch.Tensor
    ) -> None:
        num_blocks, heads, block_size, _ = kv.shape
        isa = _get_attn_isa(kv.dtype, block_size, key.shape[-1], "auto")
        k_cache, v_cache = kv.view(num_blocks, heads, 2 * block_size, -1).chunk(2, dim=2)
        ops.cpu_attn_reshape_and_cache(key, value, k_cache, v_cache, slots, isa)

    return write


WRITERS = ["fake"] + (["vllm"] if HAS_VLLM else [])


def as_torch(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


@pytest.mark.parametrize("writer_name", WRITERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_returns_the_rows_the_backend_wrote(writer_name: str, dtype: torch.dtype) -> None:
    write = fake_write if writer_name == "fake" else vllm_write()
    cache = torch.zeros(6, HEADS, BLOCK, 2 * DIM, dtype=dtype)
    layout = BlockLayout.probe(cache, BLOCK, write)
    generator = torch.Generator().manual_seed(0)
    num_tokens, block_ids = 70, [4, 1, 5]  # the last block partly filled
    keys = torch.randn(num_tokens, HEADS, DIM, generator=generator).to(dtype)
    values = torch.randn(num_tokens, HEADS, DIM, generator=generator).to(dtype)
    slots = torch.tensor([block_ids[t // BLOCK] * BLOCK + t % BLOCK for t in range(num_tokens)])
    write(keys, values, cache, slots)

    got_k, got_v = layout.gather(cache, block_ids, num_tokens)
    assert torch.equal(as_torch(got_k, dtype), keys)
    assert torch.equal(as_torch(got_v, dtype), values)

    # scatter from token 32 on (a block boundary, as after a local prefix hit) into other
    # blocks: the backend would have written exactly these elements
    landed = torch.zeros_like(cache)
    layout.scatter(landed, [2, 3], 0, got_k[32:], got_v[32:])
    expected = torch.zeros_like(cache)
    tail = torch.tensor([[2, 3][t // BLOCK] * BLOCK + t % BLOCK for t in range(num_tokens - 32)])
    write(keys[32:], values[32:], expected, tail)
    assert torch.equal(landed, expected)


def test_a_write_that_loses_elements_is_refused() -> None:
    def lossy(
        key: torch.Tensor, value: torch.Tensor, kv: torch.Tensor, slots: torch.Tensor
    ) -> None:
        fake_write(key, value, kv, slots)
        kv.view(-1)[0] = -1.0  # one K element never lands

    with pytest.raises(NotImplementedError, match="locate"):
        BlockLayout.probe(torch.zeros(1, HEADS, BLOCK, 2 * DIM), BLOCK, lossy)


def test_an_unexpected_cache_shape_is_refused() -> None:
    with pytest.raises(NotImplementedError, match="expected"):
        BlockLayout.probe(torch.zeros(2, BLOCK, HEADS, DIM), BLOCK, fake_write)
