"""A straightforward per-row, per-token reference of the sampler's logits processing.

Written from the semantics (vLLM's), not from the batched code: plain loops over one row.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from prfaas.engine.sampling_params import SamplingParams


@dataclass
class Row:
    params: SamplingParams
    prompt_token_ids: list[int] = field(default_factory=list)
    output_token_ids: list[int] = field(default_factory=list)


def reference_processed(logits: torch.Tensor, row: Row, eos: frozenset[int]) -> list[float]:
    """Logit bias, min_tokens, then repetition, frequency and presence penalties."""
    p = row.params
    out = [float(x) for x in logits.tolist()]
    for token, bias in p.bias_pairs:
        out[token] += bias
    if len(row.output_token_ids) < p.min_tokens:
        banned = set(p.stop_token_ids) | (set() if p.ignore_eos else set(eos))
        for token in banned:
            out[token] = -math.inf
    counts = Counter(row.output_token_ids)
    seen = set(row.prompt_token_ids) | set(row.output_token_ids)
    for token in range(len(out)):
        x = out[token]
        if token in seen:
            x = x / p.repetition_penalty if x > 0 else x * p.repetition_penalty
        x -= p.frequency_penalty * counts[token]
        x -= p.presence_penalty * (1 if counts[token] else 0)
        out[token] = x
    return out


def reference_probs(processed: list[float], params: SamplingParams) -> list[float]:
    """Temperature, min_p (relative to the top probability), top-k, top-p, softmax."""
    vals = [x / params.temperature for x in processed]
    keep = [not math.isinf(x) for x in vals]
    probs = _softmax(vals, keep)
    if params.min_p > 0:
        top = max(probs)
        keep = [k and pr >= params.min_p * top for k, pr in zip(keep, probs, strict=True)]
    if 0 < params.top_k < len(vals):
        kth = sorted((v for v, k in zip(vals, keep, strict=True) if k), reverse=True)
        threshold = kth[min(params.top_k, len(kth)) - 1]
        keep = [k and v >= threshold for k, v in zip(keep, vals, strict=True)]
    if params.top_p < 1.0:
        probs = _softmax(vals, keep)
        order = sorted(range(len(vals)), key=lambda t: -probs[t])
        mass = 0.0
        for t in order:
            if mass >= params.top_p:
                keep[t] = False
            mass += probs[t]
    return _softmax(vals, keep)


def _softmax(vals: list[float], keep: list[bool]) -> list[float]:
    top = max(v for v, k in zip(vals, keep, strict=True) if k)
    exps = [math.exp(v - top) if k else 0.0 for v, k in zip(vals, keep, strict=True)]
    total = sum(exps)
    return [e / total for e in exps]
