"""The runner of hybrid models (Kimi Linear): paged MLA latent rows plus KDA state slots.

Caches, one per layer, come from the model (``allocate_caches``): an MLA layer keeps
``(num_blocks * block_size, latent_dim)`` rows addressed like K/V slots; a KDA layer keeps
``num_state_slots`` states addressed by the slot ids of ``LinearStateManager``. Before the
model runs, each chunk's live slot is zeroed (a new sequence) or loaded from a snapshot (a
prefix hit), as its ``StatePlan`` says; snapshots are written during the step. Policy (which
slot, which snapshot) is the cache manager's; this class only moves tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from prfaas.engine.handoff import KvPayload, LinearState
from prfaas.engine.runner import (
    KvTensors,
    LayerHook,
    LayerReader,
    NamedTensors,
    flatten_step,
    slot_ids,
)
from prfaas.engine.scheduler import SchedulerOutput
from prfaas.model.kimi_paged import HybridMetadata, KdaCache, LinearMetadata, LinearSegment


class HybridModelRunner:
    def __init__(
        self,
        model: Any,
        num_blocks: int,
        block_size: int,
        num_state_slots: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.dtype = dtype
        self.device = device
        self.caches: list[torch.Tensor | KdaCache] = model.allocate_caches(
            num_blocks * block_size, num_state_slots, dtype, device
        )
        self.kda = [c for c in self.caches if isinstance(c, KdaCache)]
        self.mla = [c for c in self.caches if isinstance(c, torch.Tensor)]

    def prepare(
        self, out: SchedulerOutput
    ) -> tuple[torch.Tensor, torch.Tensor, HybridMetadata, list[int]]:
        """(input_ids (T,), positions (T,), metadata, rows to sample); applies the chunks'
        state loads (zero or copy from a snapshot) first."""
        input_ids, positions, attn, sample_rows = flatten_step(out, self.block_size, self.device)
        linear = LinearMetadata(prefills=[], decode_rows=None, decode_slots=None)
        decode_rows: list[int] = []
        decode_slots: list[int] = []
        row = 0
        for chunk in out.chunks:
            plan = chunk.state
            assert plan is not None, "a hybrid model's chunks carry a state plan"
            n, end = len(chunk.token_ids), chunk.start + len(chunk.token_ids)
            if chunk.start == 0:
                self._zero(plan.slot)
            elif plan.source is not None:
                self._copy(plan.source, plan.slot)
            inside = [(p - chunk.start, s) for p, s in plan.snapshots if p < end]
            linear.copies_after += [(plan.slot, s) for p, s in plan.snapshots if p == end]
            if n == 1 and chunk.start > 0:  # flatten_step's decode rows, in the same order
                decode_rows.append(row)
                decode_slots.append(plan.slot)
            else:
                linear.prefills.append(LinearSegment(row, row + n, plan.slot, inside))
            row += n
        if decode_rows:
            linear.decode_rows = torch.tensor(decode_rows, device=self.device)
            linear.decode_slots = torch.tensor(decode_slots, device=self.device)
        return input_ids, positions, HybridMetadata(attn, linear), sample_rows

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, on_layer: LayerHook | None = None) -> torch.Tensor:
        """Run one step; returns float32 logits (num_sampled, vocab) in chunk order.
        ``on_layer(i)`` is called after layer ``i`` has written its rows or states."""
        input_ids, positions, meta, sample_rows = self.prepare(out)
        if on_layer is None:
            hidden = self.model(input_ids, positions, meta, self.caches)
        else:
            hidden = self.model(input_ids, positions, meta, self.caches, on_layer)
        if not sample_rows:
            return torch.empty(0, device=self.device)
        rows = torch.tensor(sample_rows, device=self.device)
        logits: torch.Tensor = self.model.compute_logits(hidden.index_select(0, rows))
        return logits

    def read_payload(
        self, block_table: list[int], state_slot: int | None, num_tokens: int
    ) -> KvTensors:
        """Copies of the latent rows of tokens ``[0, num_tokens)`` and of the live state."""
        assert state_slot is not None
        idx = self._slots(block_table, num_tokens)
        latent = [cache.index_select(0, idx) for cache in self.mla]
        states = [
            LinearState(c.recurrent[state_slot].clone(), c.conv[state_slot].clone())
            for c in self.kda
        ]
        return KvTensors([], latent, states)

    def layer_reader(
        self, block_table: list[int], state_slot: int | None, num_tokens: int
    ) -> LayerReader:
        """``read(i)``: copies of layer ``i``'s part of the payload: ``L{i}.latent`` rows of
        tokens ``[0, num_tokens)`` (MLA) or the live ``L{i}.recurrent`` and ``L{i}.conv``
        states (KDA; final once the prompt's last chunk has run layer ``i``)."""
        assert state_slot is not None
        idx = self._slots(block_table, num_tokens)

        def read(i: int) -> NamedTensors:
            cache = self.caches[i]
            if isinstance(cache, KdaCache):
                return [
                    (f"L{i}.recurrent", cache.recurrent[state_slot].clone()),
                    (f"L{i}.conv", cache.conv[state_slot].clone()),
                ]
            return [(f"L{i}.latent", cache.index_select(0, idx))]

        return read

    def write_payload(
        self, block_table: list[int], state_slot: int | None, payload: KvPayload
    ) -> None:
        """Store an imported (validated) payload in the request's blocks and state slot."""
        assert state_slot is not None
        idx = self._slots(block_table, payload.num_tokens)
        with torch.inference_mode():
            for cache, rows in zip(self.mla, payload.latent, strict=True):
                cache.index_copy_(0, idx, rows.to(device=self.device, dtype=self.dtype))
            for c, state in zip(self.kda, payload.states, strict=True):
                c.recurrent[state_slot] = state.recurrent.to(self.device)
                c.conv[state_slot] = state.conv.to(self.device)

    def _slots(self, block_table: list[int], num_tokens: int) -> torch.Tensor:
        ids = slot_ids(block_table, self.block_size, 0, num_tokens)
        return torch.from_numpy(ids).to(self.device)

    def _zero(self, slot: int) -> None:
        for c in self.kda:
            c.recurrent[slot].zero_()
            c.conv[slot].zero_()

    def _copy(self, src: int, dst: int) -> None:
        for c in self.kda:
            c.recurrent[dst] = c.recurrent[src]
            c.conv[dst] = c.conv[src]
