"""vLLM's paged KV cache <-> the engine-neutral wire rows (one token per row, K and V apart).

The wire layers of a hand-off, per attention layer i in model order, are ``L{i}.k`` and
``L{i}.v``, each ``(num_tokens, num_kv_heads, head_dim)`` in the cache dtype: the names and
shapes ``prefill/kv_export.py`` gives the reference engine's full-attention layers.

vLLM's CPU attention backend keeps one tensor per layer, ``(num_blocks, num_kv_heads,
block_size, 2 * head_dim)``, but where a token's K and V sit inside a block is its kernels'
business and depends on the instruction set they were built for. So the layout is not
assumed: ``BlockLayout.probe`` asks the backend's own cache-write op to store known values
into a scratch block and reads back, for every (token offset, head, dim) of K and of V, the
element of the block that holds it. Blocks are independent, so that per-block index is the
whole mapping: token t of a request lives in block ``block_ids[t // block_size]`` at offset
``t % block_size``. Probe values are small integers (exact in fp32, fp16 and bf16), four
bits per pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from prfaas.transfer.messages import DType

TORCH_TO_WIRE = {
    torch.float32: DType.FLOAT32,
    torch.float16: DType.FLOAT16,
    torch.bfloat16: DType.BFLOAT16,
}
_DIGIT_BITS = 4

# (key, value, kv_cache, slot_mapping): the backend's write of token rows
# key, value: (num_tokens, num_kv_heads, head_dim); kv_cache: one layer's cache tensor
CacheWriter = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


def wire_names(layer_index: int) -> tuple[str, str]:
    return f"L{layer_index}.k", f"L{layer_index}.v"


@dataclass(frozen=True)
class BlockLayout:
    num_kv_heads: int
    block_size: int
    head_dim: int
    # element of a block (flattened) holding (offset, head, dim): (block_size, heads, head_dim)
    key_index: torch.Tensor
    value_index: torch.Tensor

    @property
    def row_shape(self) -> tuple[int, int]:
        return self.num_kv_heads, self.head_dim

    @staticmethod
    def probe(kv_layer: torch.Tensor, block_size: int, write: CacheWriter) -> BlockLayout:
        shape = tuple(kv_layer.shape)
        if len(shape) != 4 or shape[2] != block_size or shape[3] % 2:
            raise NotImplementedError(
                f"KV cache layer of shape {shape} (block size {block_size}): expected "
                "(num_blocks, num_kv_heads, block_size, 2 * head_dim)"
            )
        if kv_layer.dtype not in TORCH_TO_WIRE:
            raise NotImplementedError(f"KV cache dtype {kv_layer.dtype} has no wire type")
        heads, head_dim = shape[1], shape[3] // 2
        rows = (block_size, heads, head_dim)
        key_index = _locate(rows, kv_layer.dtype, write, is_key=True)
        value_index = _locate(rows, kv_layer.dtype, write, is_key=False)
        used = torch.cat([key_index.flatten(), value_index.flatten()])
        if used.unique().numel() != used.numel():
            raise NotImplementedError("the backend's cache write is not one slot per element")
        return BlockLayout(heads, block_size, head_dim, key_index, value_index)

    def _where(self, block_ids: list[int], start: int, end: int) -> tuple[torch.Tensor, ...]:
        if end > len(block_ids) * self.block_size:
            raise ValueError(f"tokens up to {end} exceed {len(block_ids)} blocks")
        tokens = torch.arange(start, end)
        blocks = torch.tensor(block_ids, dtype=torch.long)[tokens // self.block_size]
        offsets = tokens % self.block_size
        return blocks[:, None, None], self.key_index[offsets], self.value_index[offsets]

    def gather(
        self, kv_layer: torch.Tensor, block_ids: list[int], num_tokens: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokens [0, num_tokens) as two fresh arrays (num_tokens, heads, head_dim): K, V.
        bfloat16 comes out as its raw uint16 bits (the wire's representation)."""
        blocks, keys, values = self._where(block_ids, 0, num_tokens)
        flat = kv_layer.view(kv_layer.shape[0], -1)
        return _to_numpy(flat[blocks, keys]), _to_numpy(flat[blocks, values])

    def scatter(
        self,
        kv_layer: torch.Tensor,
        block_ids: list[int],
        start: int,
        keys: np.ndarray,
        values: np.ndarray,
    ) -> None:
        """Write rows ``keys[t]``, ``values[t]`` as tokens ``start + t`` of ``block_ids``."""
        blocks, key_at, value_at = self._where(block_ids, start, start + keys.shape[0])
        flat = kv_layer.view(kv_layer.shape[0], -1)
        flat[blocks, key_at] = _from_numpy(keys, kv_layer.dtype)
        flat[blocks, value_at] = _from_numpy(values, kv_layer.dtype)


def _locate(
    rows: tuple[int, int, int], dtype: torch.dtype, write: CacheWriter, is_key: bool
) -> torch.Tensor:
    """For each row element of K (or V): its element index within one block."""
    block_size, heads, head_dim = rows
    num_rows = block_size * heads * head_dim
    block_numel = 2 * num_rows
    ids = torch.arange(num_rows).view(rows)
    found = torch.zeros(block_numel, dtype=torch.long)
    written = torch.zeros(block_numel, dtype=torch.bool)
    slots = torch.arange(block_size, dtype=torch.long)
    for shift in range(0, max(1, (num_rows - 1).bit_length()), _DIGIT_BITS):
        digit = ((ids >> shift) & ((1 << _DIGIT_BITS) - 1)).to(dtype)
        other = torch.full(rows, -1.0, dtype=dtype)
        scratch = torch.full((1, heads, block_size, 2 * head_dim), -1.0, dtype=dtype)
        write(digit if is_key else other, other if is_key else digit, scratch, slots)
        got = scratch.flatten().float()
        written |= got >= 0
        found |= got.clamp(min=0).long() << shift
    index = torch.full((num_rows,), -1, dtype=torch.long)
    index[found[written]] = torch.nonzero(written).flatten()
    if int(written.sum()) != num_rows or bool((index < 0).any()):
        raise NotImplementedError("could not locate every K/V element in the cache block")
    return index.view(rows)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _from_numpy(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)
