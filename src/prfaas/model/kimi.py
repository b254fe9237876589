"""Kimi Linear for the engine: flattened tokens of many requests over paged MLA blocks and
KDA state slots (``kimi_paged``). Same runner interface as ``LlamaForCausalLM``.

Module names equal transformers' ``KimiLinearForCausalLM`` and ``KimiSequenceModel`` (the
single-sequence reference it is tested against), so checkpoints load the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from prfaas.model.kimi_config import KimiConfig
from prfaas.model.kimi_layers import KimiDeltaAttention, KimiMLAttention
from prfaas.model.kimi_model import KimiBackbone, KimiDecoderLayer
from prfaas.model.kimi_paged import HybridMetadata, KdaCache, kda_paged, mla_paged
from prfaas.model.kimi_weights import load_kimi_weights

Tensor = torch.Tensor
LayerCache = Tensor | KdaCache  # MLA: (num_blocks * block_size, latent_dim); KDA: state slots


class KimiLinearForCausalLM(nn.Module):
    """forward(input_ids (T,), positions (T,), meta, caches) -> hidden (T, hidden_size)."""

    def __init__(self, hf_config: Any, max_positions: int) -> None:
        super().__init__()
        config = KimiConfig.from_hf_dict(hf_config.to_dict())
        self.config = config
        self.model = KimiBackbone(config)
        self.lm_head: nn.Linear | None = None
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def allocate_caches(
        self, num_block_slots: int, num_state_slots: int, dtype: torch.dtype, device: torch.device
    ) -> list[LayerCache]:
        """One cache per layer: MLA latent rows by block slot, KDA states by state slot."""
        caches: list[LayerCache] = []
        for layer in self.model.layers:
            attn = layer.self_attn
            if isinstance(attn, KimiDeltaAttention):
                heads, dim = attn.num_heads, attn.head_dim
                caches.append(
                    KdaCache(
                        torch.zeros(num_state_slots, heads, dim, dim, device=device),
                        torch.zeros(
                            num_state_slots,
                            attn.conv_kernel - 1,
                            3 * attn.qkv_dim,
                            dtype=dtype,
                            device=device,
                        ),
                    )
                )
            else:
                assert isinstance(attn, KimiMLAttention)
                latent_dim = attn.kv_lora_rank + attn.qk_rope_head_dim
                caches.append(torch.zeros(num_block_slots, latent_dim, dtype=dtype, device=device))
        return caches

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor,
        meta: HybridMetadata,
        caches: list[LayerCache],
        on_layer: Callable[[int], None] | None = None,
    ) -> Tensor:
        """``on_layer(i)`` runs after layer ``i`` has written this step's latent rows or
        advanced its states in ``caches``."""
        # No positional encoding anywhere (MLA is NoPE, KDA is recurrent): positions unused.
        x = self.model.embed_tokens(input_ids)
        layers = cast(list[KimiDecoderLayer], list(self.model.layers))
        for i, (layer, cache) in enumerate(zip(layers, caches, strict=True)):
            h = layer.input_layernorm(x)
            if isinstance(layer.self_attn, KimiDeltaAttention):
                assert isinstance(cache, KdaCache)
                h = kda_paged(layer.self_attn, h, meta.linear, cache)
            else:
                assert isinstance(cache, Tensor)
                h = mla_paged(layer.self_attn, h, meta.attn, cache)
            x = x + h
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            if on_layer is not None:
                on_layer(i)
        return self.model.norm(x)

    def compute_logits(self, hidden: Tensor) -> Tensor:
        """hidden: (N, hidden_size) -> float32 logits (N, vocab_size)."""
        head = self.model.embed_tokens if self.lm_head is None else self.lm_head
        return F.linear(hidden, head.weight).float()

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> None:
        load_kimi_weights(self, weights, self.config, tied=self.lm_head is None)
