"""The KV hand-off payload: what a prefill instance exports and a decode instance imports.

It carries the KV of every prompt token in every full-attention layer (K and V for GQA
layers, the latent rows for MLA layers), the final state of every linear-attention (KDA)
layer, the first token the prefill side sampled, and what the receiver needs to refuse a
payload that does not fit it: the model fingerprint, the layer layout, dtypes and shapes.
Tensors here; the wire format (``prfaas.transfer``) turns it into bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from prfaas.engine.logprobs import TokenLogprobs
from prfaas.kvcache.spec import FullAttentionSpec, LayerSpec, LinearStateSpec, MLASpec

FULL_ATTENTION = "full_attention"  # K and V per token: kv
MLA = "mla"  # one latent row per token: latent
KDA = "kda"  # one fixed-size state: states


class KvImportError(ValueError):
    """A payload does not fit this engine; nothing was imported."""


class FingerprintMismatchError(KvImportError):
    """The payload was computed under other model weights."""


@dataclass(frozen=True)
class LayerLayout:
    """One KV-bearing layer: its index in the model, its kind and its tensor shapes.

    full_attention: K and V (num_tokens, num_kv_heads, head_dim).
    mla: latent rows (num_tokens, head_dim), head_dim = kv_lora_rank + rope dim, num_kv_heads 1.
    kda: recurrent (num_kv_heads, head_dim, head_dim) float32 and conv
    (conv_taps, 3 * num_kv_heads * head_dim) in the KV dtype.
    """

    layer_index: int
    kind: str  # FULL_ATTENTION | MLA | KDA
    num_kv_heads: int
    head_dim: int
    conv_taps: int = 0

    def state_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(recurrent, conv) shapes of a KDA layer's state."""
        heads, dim = self.num_kv_heads, self.head_dim
        return (heads, dim, dim), (self.conv_taps, 3 * heads * dim)


@dataclass
class LinearState:
    """The state of one KDA layer after the prompt."""

    recurrent: torch.Tensor  # (num_heads, head_k_dim, head_v_dim) float32
    conv: torch.Tensor  # (conv_kernel - 1, 3 * num_heads * head_dim): last q | k | v inputs


def layout_from_specs(specs: Sequence[LayerSpec]) -> list[LayerLayout]:
    """The payload layout of a model with these layer specs (``kvcache.spec``)."""
    layout = []
    for i, spec in enumerate(specs):
        if isinstance(spec, FullAttentionSpec):
            # The engine keeps every token, sliding window or not.
            layout.append(LayerLayout(i, FULL_ATTENTION, spec.num_kv_heads, spec.head_dim))
        elif isinstance(spec, MLASpec):
            layout.append(LayerLayout(i, MLA, 1, spec.kv_lora_rank + spec.qk_rope_head_dim))
        elif isinstance(spec, LinearStateSpec) and spec.kind == KDA:
            recurrent, conv = (part.shape for part in spec.parts)
            layout.append(LayerLayout(i, KDA, recurrent[0], recurrent[1], conv_taps=conv[0]))
        else:
            raise ValueError(f"layer {i}: {spec} has no payload layout")
    return layout


def tensor_names(layout: Sequence[LayerLayout]) -> list[tuple[str, bool]]:
    """(name, per_token) of every payload tensor, in layout order: ``L{i}.k``, ``L{i}.v``
    (full_attention), ``L{i}.latent`` (mla), ``L{i}.recurrent``, ``L{i}.conv`` (kda).
    ``per_token``: one row per prompt token (block data); else a fixed-size state."""
    parts = {FULL_ATTENTION: ("k", "v"), MLA: ("latent",), KDA: ("recurrent", "conv")}
    return [
        (f"L{entry.layer_index}.{part}", entry.kind != KDA)
        for entry in layout
        for part in parts[entry.kind]
    ]


@dataclass
class KvPayload:
    model_fingerprint: str
    token_ids: list[int]  # the prompt; the KV below covers all of them
    # Sampled by the prefill side from the last prompt position; None when that side did not
    # send it (vLLM's): the decode side then computes the last prompt token itself.
    first_token_id: int | None
    dtype: str  # torch dtype name of the KV tensors (KDA recurrent states are float32)
    layout: list[LayerLayout]
    # Per full_attention layer, in layout order, (K, V), each (num_tokens, num_kv_heads, head_dim).
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    # Per mla layer, in layout order: (num_tokens, kv_lora_rank + qk_rope_head_dim).
    latent: list[torch.Tensor] = field(default_factory=list)
    # Per kda layer, in layout order: the state after all num_tokens tokens.
    states: list[LinearState] = field(default_factory=list)
    # Computed where the prompt was, when the request asked for them: the first token's
    # logprobs and the prompt's (one per prompt token, the first None).
    first_logprobs: TokenLogprobs | None = None
    prompt_logprobs: list[TokenLogprobs | None] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def kv_bytes(self) -> int:
        """Bytes of KV data (what the transfer moves, before any codec)."""
        tensors = [t for kv in self.kv for t in kv] + self.latent
        tensors += [t for s in self.states for t in (s.recurrent, s.conv)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def named_tensors(self) -> list[tuple[str, bool, torch.Tensor]]:
        """(name, per_token, tensor) in ``tensor_names`` order: what a wire format carries."""
        kv, latent, states = iter(self.kv), iter(self.latent), iter(self.states)
        tensors: list[torch.Tensor] = []
        for entry in self.layout:
            if entry.kind == FULL_ATTENTION:
                tensors.extend(next(kv))
            elif entry.kind == MLA:
                tensors.append(next(latent))
            else:
                state = next(states)
                tensors += [state.recurrent, state.conv]
        names = tensor_names(self.layout)
        return [(n, per_token, t) for (n, per_token), t in zip(names, tensors, strict=True)]

    @classmethod
    def from_named_tensors(
        cls,
        model_fingerprint: str,
        token_ids: list[int],
        first_token_id: int | None,
        dtype: str,
        layout: list[LayerLayout],
        tensors: Mapping[str, torch.Tensor],
    ) -> KvPayload:
        """The inverse of ``named_tensors``; KvImportError if a name is missing or unknown."""
        expected = [name for name, _ in tensor_names(layout)]
        if set(tensors) != set(expected):
            missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
            raise KvImportError(
                f"payload tensors: missing {sorted(missing)[:4]}, unknown {sorted(extra)[:4]}"
            )
        payload = cls(model_fingerprint, token_ids, first_token_id, dtype, layout, kv=[])
        for entry in layout:
            at = f"L{entry.layer_index}."
            if entry.kind == FULL_ATTENTION:
                payload.kv.append((tensors[at + "k"], tensors[at + "v"]))
            elif entry.kind == MLA:
                payload.latent.append(tensors[at + "latent"])
            else:
                payload.states.append(LinearState(tensors[at + "recurrent"], tensors[at + "conv"]))
        return payload

    def validate(
        self, fingerprint: str, layout: list[LayerLayout], dtype: torch.dtype, vocab_size: int
    ) -> None:
        """Raise KvImportError unless the payload fits an engine with these properties."""
        if self.model_fingerprint != fingerprint:
            raise FingerprintMismatchError(
                f"payload model fingerprint {self.model_fingerprint[:16]}… differs from this "
                f"engine's {fingerprint[:16]}…"
            )
        if not self.token_ids:
            raise KvImportError("payload has no tokens")
        first = [] if self.first_token_id is None else [self.first_token_id]
        if any(not 0 <= t < vocab_size for t in [*first, *self.token_ids]):
            raise KvImportError("payload token id outside the vocabulary")
        if self.layout != layout:
            raise KvImportError("payload layer layout differs from this model's")
        if self.dtype != str(dtype).removeprefix("torch."):
            raise KvImportError(f"payload dtype {self.dtype} differs from the KV cache's {dtype}")
        by_kind = {
            kind: [e for e in layout if e.kind == kind] for kind in (FULL_ATTENTION, MLA, KDA)
        }
        for kind, entries in ((FULL_ATTENTION, self.kv), (MLA, self.latent), (KDA, self.states)):
            if len(entries) != len(by_kind[kind]):
                raise KvImportError(
                    f"payload has {len(entries)} {kind} layers, layout says {len(by_kind[kind])}"
                )
        n = self.num_tokens
        expected: list[tuple[LayerLayout, str, torch.Tensor, tuple[int, ...], torch.dtype]] = []
        for entry, (k, v) in zip(by_kind[FULL_ATTENTION], self.kv, strict=True):
            want = (n, entry.num_kv_heads, entry.head_dim)
            expected += [(entry, "K", k, want, dtype), (entry, "V", v, want, dtype)]
        for entry, rows in zip(by_kind[MLA], self.latent, strict=True):
            expected.append((entry, "latent", rows, (n, entry.head_dim), dtype))
        for entry, state in zip(by_kind[KDA], self.states, strict=True):
            recurrent, conv = entry.state_shapes()
            expected.append((entry, "recurrent state", state.recurrent, recurrent, torch.float32))
            expected.append((entry, "conv state", state.conv, conv, dtype))
        for entry, name, t, shape, want_dtype in expected:
            if tuple(t.shape) != shape or t.dtype != want_dtype:
                raise KvImportError(
                    f"layer {entry.layer_index} {name}: shape {tuple(t.shape)} {t.dtype}, "
                    f"expected {shape} {want_dtype}"
                )
