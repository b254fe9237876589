"""Logits processors that depend on a sequence's history, batched over the step's rows.

Each function takes the step's logits (N, vocab) float32 and one ``SampleRow`` per row, and
builds per-batch index tensors (no per-row tensor ops, no ``.item()``). Semantics follow
vLLM: ``logit_bias`` and ``min_tokens`` first, then the penalties (repetition over prompt
and output tokens, frequency and presence over output tokens only).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from prfaas.engine.sampling_params import SamplingParams


class SampleRow(Protocol):
    """What the sampler reads of a sequence (``Request`` is one)."""

    @property
    def params(self) -> SamplingParams: ...
    @property
    def prompt_token_ids(self) -> list[int]: ...
    @property
    def output_token_ids(self) -> list[int]: ...


def apply_logit_bias(logits: torch.Tensor, rows: Sequence[SampleRow]) -> None:
    """Add each row's ``logit_bias`` in place (ids were checked against the vocabulary)."""
    idx_row: list[int] = []
    idx_col: list[int] = []
    values: list[float] = []
    for i, row in enumerate(rows):
        for token, bias in row.params.bias_pairs:
            idx_row.append(i)
            idx_col.append(token)
            values.append(bias)
    if not values:
        return
    index = (_ints(idx_row, logits), _ints(idx_col, logits))
    logits.index_put_(index, torch.tensor(values, device=logits.device), accumulate=True)


def apply_min_tokens(
    logits: torch.Tensor, rows: Sequence[SampleRow], eos_token_ids: frozenset[int]
) -> None:
    """Mask stop tokens (and EOS unless ``ignore_eos``) of rows short of ``min_tokens``."""
    idx_row: list[int] = []
    idx_col: list[int] = []
    for i, row in enumerate(rows):
        p = row.params
        if len(row.output_token_ids) >= p.min_tokens:
            continue
        banned = set(p.stop_token_ids) if p.ignore_eos else set(p.stop_token_ids) | eos_token_ids
        for token in sorted(t for t in banned if t < logits.shape[1]):
            idx_row.append(i)
            idx_col.append(token)
    if idx_row:
        logits[_ints(idx_row, logits), _ints(idx_col, logits)] = float("-inf")


def apply_penalties(logits: torch.Tensor, rows: Sequence[SampleRow]) -> None:
    """Repetition, frequency and presence penalties, in place, for the rows that have any.

    For a token seen in the prompt or the output, a positive logit is divided by
    ``repetition_penalty`` and a negative one multiplied; then ``frequency_penalty`` times
    its output count and ``presence_penalty`` (if it occurs in the output) are subtracted.
    Work is proportional to the histories, not to rows x vocab: only seen entries change.
    ``logits`` must be contiguous (entries are addressed as ``row * vocab + token``).
    """
    which = [i for i, row in enumerate(rows) if row.params.has_penalties]
    if not which:
        return
    vocab = logits.shape[1]
    flat = logits.view(-1)
    outputs = _flat_ids([rows[i].output_token_ids for i in which], which, vocab, logits)
    prompts = _flat_ids([rows[i].prompt_token_ids for i in which], which, vocab, logits)
    rep = _floats([r.params.repetition_penalty for r in rows], logits)
    seen = torch.cat([outputs, prompts]).unique()
    x = flat[seen]
    penalty = rep[seen // vocab]
    flat[seen] = torch.where(x > 0, x / penalty, x * penalty)
    out_ids, out_counts = outputs.unique(return_counts=True)
    freq = _floats([r.params.frequency_penalty for r in rows], logits)[out_ids // vocab]
    pres = _floats([r.params.presence_penalty for r in rows], logits)[out_ids // vocab]
    flat[out_ids] -= freq * out_counts.to(flat.dtype) + pres


def _flat_ids(
    histories: list[list[int]], row_of: list[int], vocab: int, like: torch.Tensor
) -> torch.Tensor:
    """int64 ``row * vocab + token`` for every token of every history (row ``row_of[i]``)."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    tokens = np.fromiter(
        itertools.chain.from_iterable(histories), dtype=np.int64, count=int(lengths.sum())
    )
    base = np.repeat(np.asarray(row_of, dtype=np.int64) * vocab, lengths)
    return torch.from_numpy(base + tokens).to(like.device)


def _ints(values: list[int], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64, device=like.device)


def _floats(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=like.device)
