"""Kimi Linear for one sequence with explicit per-layer state: the reference the engine's
paged model is tested against, and a working model on its own.

Module names equal transformers' `KimiLinearForCausalLM` (`model.layers.{i}.self_attn`, ...).
The state of a sequence is one entry per layer: a `KdaState` for KDA layers, the latent rows
of every token so far, (num_tokens, latent_dim), for MLA layers; None before the first call.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prfaas.model.kimi_config import LINEAR_ATTENTION, SPARSE_MLP, KimiConfig
from prfaas.model.kimi_layers import KdaState, KimiDeltaAttention, KimiMLAttention, KimiRMSNorm
from prfaas.model.kimi_mlp import KimiMLP, KimiMoE
from prfaas.model.kimi_weights import load_kimi_weights
from prfaas.model.safetensors_file import iter_tensors

Tensor = torch.Tensor
LayerState = KdaState | Tensor | None


class KimiDecoderLayer(nn.Module):
    """Pre-norm residual block: attention (KDA or MLA), then MLP (dense or MoE)."""

    def __init__(self, config: KimiConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn: KimiDeltaAttention | KimiMLAttention
        if config.layer_types[layer_idx] == LINEAR_ATTENTION:
            self.self_attn = KimiDeltaAttention(config)
        else:
            self.self_attn = KimiMLAttention(config)
        sparse = config.mlp_layer_types[layer_idx] == SPARSE_MLP
        self.mlp = KimiMoE(config) if sparse else KimiMLP(config)
        self.input_layernorm = KimiRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = KimiRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        # x: (num_tokens, hidden_size)
        h = self.input_layernorm(x)
        new_state: LayerState
        if isinstance(self.self_attn, KimiDeltaAttention):
            assert state is None or isinstance(state, KdaState)
            h, new_state = self.self_attn(h, state)
        else:
            assert state is None or isinstance(state, Tensor)
            h, rows = self.self_attn(h, state)
            new_state = rows if state is None else torch.cat([state, rows])
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), new_state


class KimiBackbone(nn.Module):
    def __init__(self, config: KimiConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            KimiDecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = KimiRMSNorm(config.hidden_size, config.rms_norm_eps)


class KimiSequenceModel(nn.Module):
    """forward(input_ids (num_tokens,), state) -> (float32 logits (num_tokens, vocab), state).

    A call continues the sequence from `state` (prefill in any number of calls, then decode
    one token per call); the state passed in is not modified.
    """

    def __init__(self, config: KimiConfig) -> None:
        super().__init__()
        self.config = config
        self.model = KimiBackbone(config)
        self.lm_head: nn.Linear | None = None
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(
        self, input_ids: Tensor, state: list[LayerState] | None = None
    ) -> tuple[Tensor, list[LayerState]]:
        layers = self.model.layers
        if state is None:
            state = [None] * len(layers)
        x = self.model.embed_tokens(input_ids)
        new_state = []
        for layer, layer_state in zip(layers, state, strict=True):
            x, layer_state = layer(x, layer_state)
            new_state.append(layer_state)
        head = self.model.embed_tokens if self.lm_head is None else self.lm_head
        return F.linear(self.model.norm(x), head.weight).float(), new_state

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> None:
        """Loads checkpoint-named (or module-named) tensors; every tensor must find a place."""
        load_kimi_weights(self, weights, self.config, tied=self.lm_head is None)

    @classmethod
    def from_folder(cls, folder: Path, dtype: torch.dtype = torch.float32) -> KimiSequenceModel:
        """A Hugging Face folder: config.json plus *.safetensors."""
        config = KimiConfig.from_hf_dict(json.loads((folder / "config.json").read_text()))
        model = cls(config)
        model.load_weights(_safetensors(sorted(folder.glob("*.safetensors"))))
        return model.to(dtype).eval()


def _safetensors(files: list[Path]) -> Iterator[tuple[str, Tensor]]:
    for path in files:
        yield from iter_tensors(path)
