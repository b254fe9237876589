"""Logits processors that depend on a sequence's history, batched over the step's rows.

Each function takes the step's logits (N, vocab) float32 and one ``SampleRow`` per row, and
builds per-batch index tensors (no per-row tensor ops, no ``.item()``). Semantics follow
vLLM: ``logit_bias`` and ``min_tokens`` first, then the penalties (repetition over prompt
and output tokens, frequency and presence over output tokens only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

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
    """
    which = [i for i, row in enumerate(rows) if row.params.has_penalties]
    if not which:
        return
    vocab = logits.shape[1]
    sub = logits[which]  # (M, vocab), a copy written back below
    output_counts = _counts([rows[i].output_token_ids for i in which], vocab, logits)
    prompt_counts = _counts([rows[i].prompt_token_ids for i in which], vocab, logits)
    seen = (output_counts > 0) | (prompt_counts > 0)
    rep = _floats([rows[i].params.repetition_penalty for i in which], logits)[:, None]
    rep = torch.where(seen, rep, torch.ones_like(sub))
    sub = torch.where(sub > 0, sub / rep, sub * rep)
    freq = _floats([rows[i].params.frequency_penalty for i in which], logits)[:, None]
    pres = _floats([rows[i].params.presence_penalty for i in which], logits)[:, None]
    sub = sub - freq * output_counts - pres * (output_counts > 0).to(sub.dtype)
    logits[which] = sub


def _counts(histories: list[list[int]], vocab: int, like: torch.Tensor) -> torch.Tensor:
    """(M, vocab) float32 occurrence counts of each history's tokens."""
    idx_row = [i for i, h in enumerate(histories) for _ in h]
    idx_col = [t for h in histories for t in h]
    counts = torch.zeros(len(histories), vocab, dtype=torch.float32, device=like.device)
    if idx_col:
        ones = torch.ones(len(idx_col), dtype=torch.float32, device=like.device)
        counts.index_put_((_ints(idx_row, like), _ints(idx_col, like)), ones, accumulate=True)
    return counts


def _ints(values: list[int], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64, device=like.device)


def _floats(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=like.device)
