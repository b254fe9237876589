"""The model runner: turns a scheduler decision into tensors, runs the model, returns logits.

It owns the KV cache tensors (one K and one V per full-attention layer, each
``(num_blocks * block_size, num_kv_heads, head_dim)``) and nothing about policy. Hybrid
models have their own runner (``hybrid_runner``) with the same ``Runner`` interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from prfaas.engine.handoff import KvPayload, LinearState
from prfaas.engine.scheduler import SchedulerOutput
from prfaas.model.attention import AttentionMetadata, DecodeGroup, PrefillSegment

KVCache = tuple[torch.Tensor, torch.Tensor]
# Called by the model after layer i has written the step's KV (``on_layer`` of ``execute``).
LayerHook = Callable[[int], None]
# One layer's payload tensors of one request, named as in ``tensor_names`` (``L3.k``, ...).
NamedTensors = list[tuple[str, torch.Tensor]]
LayerReader = Callable[[int], NamedTensors]
DECODE_GROUPS = 4  # decode rows are attended in up to this many length groups
MIN_GROUP_ROWS = 4  # ... of at least this many rows each


class KvTensors(NamedTuple):
    """A request's KV as the payload carries it (see ``KvPayload``)."""

    kv: list[KVCache]
    latent: list[torch.Tensor]
    states: list[LinearState]


class Runner(Protocol):
    def execute(self, out: SchedulerOutput, on_layer: LayerHook | None = None) -> torch.Tensor: ...
    def layer_reader(
        self, block_table: list[int], state_slot: int | None, num_tokens: int
    ) -> LayerReader: ...
    def read_payload(
        self, block_table: list[int], state_slot: int | None, num_tokens: int
    ) -> KvTensors: ...
    def write_payload(
        self, block_table: list[int], state_slot: int | None, payload: KvPayload
    ) -> None: ...


def kv_cache_shape(
    num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int
) -> tuple[int, int, int]:
    return (num_blocks * block_size, num_kv_heads, head_dim)


class ModelRunner:
    def __init__(
        self,
        model: nn.Module,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.device = device
        self.dtype = dtype
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        shape = kv_cache_shape(num_blocks, block_size, num_kv_heads, head_dim)
        num_layers: int = model.num_kv_layers  # type: ignore[assignment]
        self.caches: list[KVCache] = [
            (
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
            )
            for _ in range(num_layers)
        ]

    def slots(self, block_table: list[int], start: int, end: int) -> np.ndarray:
        """Slot ids of token positions ``[start, end)`` under ``block_table``."""
        return slot_ids(block_table, self.block_size, start, end)

    def prepare(
        self, out: SchedulerOutput
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        return flatten_step(out, self.block_size, self.device)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, on_layer: LayerHook | None = None) -> torch.Tensor:
        """Run one step; returns float32 logits (num_sampled, vocab) in chunk order.
        ``on_layer(i)`` is called after layer ``i`` has written the step's K/V."""
        return self.execute_keeping(out, set(), on_layer)[0]

    @torch.inference_mode()
    def execute_keeping(
        self, out: SchedulerOutput, keep: set[str], on_layer: LayerHook | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``execute``, also returning the hidden rows (chunk length, hidden_size) of the
        chunks of the requests in ``keep`` (for prompt logprobs)."""
        input_ids, positions, meta, sample_rows = self.prepare(out)
        if on_layer is None:
            hidden = self.model(input_ids, positions, meta, self.caches)
        else:
            hidden = self.model(input_ids, positions, meta, self.caches, on_layer)
        kept: dict[str, torch.Tensor] = {}
        row = 0
        for chunk in out.chunks:
            if chunk.request_id in keep:
                kept[chunk.request_id] = hidden[row : row + len(chunk.token_ids)]
            row += len(chunk.token_ids)
        if not sample_rows:
            return torch.empty(0, device=self.device), kept
        rows = torch.tensor(sample_rows, device=self.device)
        return self.compute_logits(hidden.index_select(0, rows)), kept

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, hidden_size) -> float32 logits (N, vocab)."""
        return self.model.compute_logits(hidden)  # type: ignore[operator]

    def read_kv(self, block_table: list[int], num_tokens: int) -> list[KVCache]:
        """Copies of K and V of tokens ``[0, num_tokens)``: per layer (num_tokens, Hkv, d)."""
        idx = self._tensor(self.slots(block_table, 0, num_tokens))
        return [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in self.caches]

    def layer_reader(
        self, block_table: list[int], state_slot: int | None, num_tokens: int
    ) -> LayerReader:
        """``read(i)``: copies of layer ``i``'s K and V of tokens ``[0, num_tokens)``, each
        (num_tokens, Hkv, d), named ``L{i}.k`` and ``L{i}.v``. The slot ids are computed once."""
        idx = self._tensor(self.slots(block_table, 0, num_tokens))

        def read(i: int) -> NamedTensors:
            k, v = self.caches[i]
            return [(f"L{i}.k", k.index_select(0, idx)), (f"L{i}.v", v.index_select(0, idx))]

        return read

    def write_kv(self, block_table: list[int], layers: list[KVCache]) -> None:
        """Store imported K and V (per layer (num_tokens, Hkv, d)) in the request's blocks."""
        num_tokens = layers[0][0].shape[0]
        idx = self._tensor(self.slots(block_table, 0, num_tokens))
        for (k_cache, v_cache), (k, v) in zip(self.caches, layers, strict=True):
            k_cache.index_copy_(0, idx, k.to(device=self.device, dtype=self.dtype))
            v_cache.index_copy_(0, idx, v.to(device=self.device, dtype=self.dtype))

    def read_payload(
        self, block_table: list[int], state_slot: int | None, num_tokens: int
    ) -> KvTensors:
        return KvTensors(self.read_kv(block_table, num_tokens), [], [])

    def write_payload(
        self, block_table: list[int], state_slot: int | None, payload: KvPayload
    ) -> None:
        self.write_kv(block_table, payload.kv)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device)


def slot_ids(block_table: list[int], block_size: int, start: int, end: int) -> np.ndarray:
    """Slot ids of token positions ``[start, end)`` under ``block_table``."""
    pos = np.arange(start, end, dtype=np.int64)
    table = np.asarray(block_table, dtype=np.int64)
    return table[pos // block_size] * block_size + pos % block_size


def flatten_step(
    out: SchedulerOutput, block_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
    """Flatten the step: (input_ids (T,), positions (T,), metadata, rows to sample)."""
    ids: list[int] = []
    positions: list[np.ndarray] = []
    slot_parts: list[np.ndarray] = []
    prefills: list[PrefillSegment] = []
    decode_rows: list[int] = []
    decode_tables: list[list[int]] = []
    decode_lens: list[int] = []
    prefill_spans: list[tuple[int, int, int]] = []  # first row, end row, first position
    prefill_tables: list[list[int]] = []
    sample_rows: list[int] = []
    row = 0
    for chunk in out.chunks:
        n = len(chunk.token_ids)
        end = chunk.start + n
        ids.extend(chunk.token_ids)
        positions.append(np.arange(chunk.start, end, dtype=np.int64))
        slot_parts.append(slot_ids(chunk.block_table, block_size, chunk.start, end))
        if n == 1 and chunk.start > 0:
            decode_rows.append(row)
            decode_tables.append(chunk.block_table)
            decode_lens.append(end)
        else:
            prefill_spans.append((row, row + n, chunk.start))
            prefill_tables.append(chunk.block_table)
            if chunk.start == 0:
                prefills.append(PrefillSegment(row, row + n, None, None))
            else:
                ctx = torch.from_numpy(slot_ids(chunk.block_table, block_size, 0, end)).to(device)
                q_pos = torch.arange(chunk.start, end, device=device)
                mask = torch.arange(end, device=device)[None, :] <= q_pos[:, None]
                prefills.append(PrefillSegment(row, row + n, ctx, mask))
        row += n
        if chunk.sample:
            sample_rows.append(row - 1)
    meta = AttentionMetadata(
        slot_mapping=_tensor(device, np.concatenate(slot_parts)),
        prefills=prefills,
        decode_rows=None,
        decode_slots=None,
        decode_mask=None,
        block_size=block_size,
    )
    if prefill_spans and device.type == "cpu":
        spans = np.asarray(prefill_spans, dtype=np.int64)
        ends = spans[:, 2] + spans[:, 1] - spans[:, 0]  # each segment's context length
        meta.prefill_spans = torch.from_numpy(spans)
        meta.prefill_tables = torch.from_numpy(padded_tables(prefill_tables, ends, block_size))
    if decode_rows:
        lens = np.asarray(decode_lens, dtype=np.int64)
        tables = padded_tables(decode_tables, lens, block_size)
        slots, valid = context_slots(tables, lens, block_size)
        rows = np.asarray(decode_rows, dtype=np.int64)
        meta.decode_rows, meta.decode_slots, meta.decode_mask = _padded(device, rows, slots, valid)
        meta.decode_groups = _decode_groups(device, rows, lens, slots, valid)
        if device.type == "cpu":
            meta.decode_tables, meta.decode_lens = torch.from_numpy(tables), torch.from_numpy(lens)
    input_ids = _tensor(device, np.asarray(ids, dtype=np.int64))
    return input_ids, _tensor(device, np.concatenate(positions)), meta, sample_rows


def padded_tables(tables: list[list[int]], lens: np.ndarray, block_size: int) -> np.ndarray:
    """The block ids covering positions ``[0, lens[i])`` of each row (decode or prefill), as one
    (D, cdiv(max_len, block_size)) int64 array padded with block 0 (Python touches each
    row's block ids only: O(blocks))."""
    width = -(-int(lens.max()) // block_size)
    tables_np = np.zeros((len(tables), width), dtype=np.int64)
    for i, table in enumerate(tables):
        n = min(len(table), width)
        tables_np[i, :n] = table[:n]
    return tables_np


def context_slots(
    tables: np.ndarray, lens: np.ndarray, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Slots of positions ``[0, lens[i])`` of each decode row under its ``padded_tables``
    row, as one (D, max_len) array padded with slot 0, and its (D, max_len) validity: one
    vectorized expression."""
    max_len = int(lens.max())
    pos = np.arange(max_len, dtype=np.int64)
    valid = pos[None, :] < lens[:, None]
    slots = tables[:, pos // block_size] * block_size + pos % block_size
    return np.where(valid, slots, 0), valid


def _padded(
    device: torch.device, rows: np.ndarray, slots: np.ndarray, valid: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Decode rows, their context slots, and the padding mask (None when nothing is padded)."""
    mask = None if valid.all() else torch.from_numpy(valid).to(device)[:, None, None, :]
    return _tensor(device, rows), _tensor(device, np.ascontiguousarray(slots)), mask


def _decode_groups(
    device: torch.device, rows: np.ndarray, lens: np.ndarray, slots: np.ndarray, valid: np.ndarray
) -> list[DecodeGroup]:
    """Split decode rows, sorted by context length, into up to DECODE_GROUPS groups of equal
    count: each group pads only to its own longest context (attention and gather work drop
    with the padding; a group costs one more attention call)."""
    order = np.argsort(lens, kind="stable")
    num_groups = min(DECODE_GROUPS, max(1, len(rows) // MIN_GROUP_ROWS))
    groups: list[DecodeGroup] = []
    for part in np.array_split(order, num_groups):
        width = int(lens[part].max())
        g_rows, g_slots, g_mask = _padded(
            device, rows[part], slots[part, :width], valid[part, :width]
        )
        groups.append(DecodeGroup(g_rows, g_slots, g_mask))
    return groups


def _tensor(device: torch.device, a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).to(device)
