"""Kimi Linear checkpoint tensor names -> module parameter names.

A Hugging Face folder (as Moonshot ships it, and as transformers' `save_pretrained` writes
it) stores the original layout; transformers' modules, and ours, use another. The
translation mirrors transformers' `conversion_mapping["kimi_linear"]`:

    self_attn.{f_a_proj,f_b_proj,dt_bias,A_log}     -> self_attn.forget_gate.*
    self_attn.{q,k,v}_conv1d.weight                   -> self_attn.conv1d.weight (cat dim 0)
    block_sparse_moe.*                                -> mlp.*
    mlp.experts.{e}.w1 / w3 (gate / up), all e        -> mlp.experts.gate_up_proj (E, 2I, H)
    mlp.experts.{e}.w2 (down), all e                  -> mlp.experts.down_proj (E, H, I)

Names already in module form pass through, so a module `state_dict()` also loads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from prfaas.model.kimi_config import KimiConfig

Tensor = torch.Tensor

_RENAMES = (
    (re.compile(r"\.block_sparse_moe\."), ".mlp."),
    (re.compile(r"self_attn\.(f_a_proj|f_b_proj|dt_bias|A_log)"), r"self_attn.forget_gate.\1"),
)
_CONV = re.compile(r"^(?P<prefix>.*self_attn\.)(?P<part>[qkv])_conv1d\.weight$")
_EXPERT = re.compile(r"^(?P<prefix>.*\.experts\.)(?P<expert>\d+)\.(?P<part>w[123])\.weight$")


def kimi_module_weights(
    weights: Iterable[tuple[str, Tensor]], num_experts: int
) -> Iterator[tuple[str, Tensor]]:
    """Translates (checkpoint name, tensor) pairs into (module name, tensor) pairs.

    Streams: a merged tensor is yielded as soon as its last part arrives, so at most one
    layer's experts are held at a time in a layer-ordered checkpoint. Raises ValueError if
    the input ends with a merge incomplete.
    """
    pending: dict[str, dict[str, Tensor]] = {}  # merged module name -> parts seen so far
    for name, tensor in weights:
        for pattern, replacement in _RENAMES:
            name = pattern.sub(replacement, name)
        if conv := _CONV.match(name):
            target = conv["prefix"] + "conv1d.weight"
            parts = pending.setdefault(target, {})
            parts[conv["part"]] = tensor
            if len(parts) == 3:
                del pending[target]
                yield target, torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        elif expert := _EXPERT.match(name):
            prefix = expert["prefix"]
            parts = pending.setdefault(prefix, {})
            parts[f"{expert['part']}.{int(expert['expert'])}"] = tensor
            if len(parts) == 3 * num_experts:
                del pending[prefix]
                yield from _merge_experts(prefix, parts, num_experts)
        else:
            yield name, tensor
    if pending:
        raise ValueError(f"checkpoint incomplete: unmerged parts for {sorted(pending)[:4]}")


def _merge_experts(
    prefix: str, parts: dict[str, Tensor], num_experts: int
) -> Iterator[tuple[str, Tensor]]:
    def stacked(part: str) -> Tensor:
        return torch.stack([parts[f"{part}.{e}"] for e in range(num_experts)])

    # w1 / w3: (moe_intermediate, hidden) each -> (E, 2 * moe_intermediate, hidden), gate first
    yield prefix + "gate_up_proj", torch.cat([stacked("w1"), stacked("w3")], dim=1)
    yield prefix + "down_proj", stacked("w2")  # (E, hidden, moe_intermediate)


def load_kimi_weights(
    module: nn.Module, weights: Iterable[tuple[str, Tensor]], config: KimiConfig, tied: bool
) -> None:
    """Copy checkpoint-named (or module-named) tensors into ``module``; every tensor must find
    a place and every parameter and buffer must be loaded. ``tied``: no ``lm_head`` (it is
    the embedding)."""
    targets = dict(module.named_parameters()) | dict(module.named_buffers())
    loaded = set()
    for name, tensor in kimi_module_weights(weights, config.num_local_experts):
        if name == "lm_head.weight" and tied:
            continue
        if name not in targets:
            raise KeyError(f"checkpoint tensor {name!r} has no place in the model")
        if targets[name].shape != tensor.shape:
            raise ValueError(
                f"{name}: checkpoint shape {tuple(tensor.shape)}, "
                f"model expects {tuple(targets[name].shape)}"
            )
        with torch.no_grad():
            targets[name].copy_(tensor)
        loaded.add(name)
    if missing := sorted(set(targets) - loaded):
        raise ValueError(f"checkpoint incomplete: missing {missing[:8]}")
