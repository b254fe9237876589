"""The KV hand-off payload: what a prefill instance exports and a decode instance imports.

It carries the KV of every prompt token in every full-attention layer, the first token the
prefill side sampled, and what the receiver needs to refuse a payload that does not fit it:
the model fingerprint, the layer layout, dtype and shapes. Tensors here; the wire format
(``prfaas.transfer``) turns it into bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class KvImportError(ValueError):
    """A payload does not fit this engine; nothing was imported."""


class FingerprintMismatchError(KvImportError):
    """The payload was computed under other model weights."""


@dataclass(frozen=True)
class LayerLayout:
    """One KV-bearing layer: its index in the model and its per-token tensor shape."""

    layer_index: int
    kind: str  # "full_attention"
    num_kv_heads: int
    head_dim: int


@dataclass
class KvPayload:
    model_fingerprint: str
    token_ids: list[int]  # the prompt; the KV below covers all of them
    first_token_id: int  # sampled by the prefill side from the last prompt position
    dtype: str  # torch dtype name of the tensors, e.g. "float32"
    layout: list[LayerLayout]
    # Per layer (K, V), each (num_tokens, num_kv_heads, head_dim).
    kv: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def kv_bytes(self) -> int:
        """Bytes of KV data (what the transfer moves, before any codec)."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)

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
        if not 0 <= self.first_token_id < vocab_size or any(
            not 0 <= t < vocab_size for t in self.token_ids
        ):
            raise KvImportError("payload token id outside the vocabulary")
        if self.layout != layout:
            raise KvImportError("payload layer layout differs from this model's")
        if self.dtype != str(dtype).removeprefix("torch."):
            raise KvImportError(f"payload dtype {self.dtype} differs from the KV cache's {dtype}")
        if len(self.kv) != len(layout):
            raise KvImportError(f"payload has {len(self.kv)} layers, layout says {len(layout)}")
        for entry, (k, v) in zip(layout, self.kv, strict=True):
            want = (self.num_tokens, entry.num_kv_heads, entry.head_dim)
            for name, t in (("K", k), ("V", v)):
                if tuple(t.shape) != want or t.dtype != dtype:
                    raise KvImportError(
                        f"layer {entry.layer_index} {name}: shape {tuple(t.shape)} {t.dtype}, "
                        f"expected {want} {dtype}"
                    )
