"""Token sampling for a batch: history-dependent processors, then greedy or a random draw.

Order (vLLM's): the grammar masks (structured outputs), logit bias and min_tokens, then
penalties; greedy rows take the argmax of that; the others divide by their temperature,
drop tokens by min_p, top-k and top-p, and draw.
Every step is one batched tensor op over the rows; the only host transfers are the final
token ids (and the logprobs, when asked for).

A seeded row draws from a generator seeded with (seed, output position): the token at
position j depends on the seed and the logits alone, whatever ran before on this or another
instance (a request prefilled remotely samples the same text as one prefilled here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prfaas.engine.logprobs import TokenLogprobs, token_logprobs
from prfaas.engine.penalties import SampleRow, apply_logit_bias, apply_min_tokens, apply_penalties
from prfaas.seeds import step_seed


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]  # per row; None where the row asked for none


def sample(
    logits: torch.Tensor,
    rows: Sequence[SampleRow],
    eos_token_ids: frozenset[int] = frozenset(),
    allowed: torch.Tensor | None = None,
) -> SamplerOutput:
    """logits: (N, vocab) float32 raw model logits, one row per sequence. ``allowed``
    (N, vocab) bool: the grammars' token masks, applied first (logprobs see them too)."""
    if not rows:
        return SamplerOutput([], [])
    raw = logits.float()
    if allowed is not None:
        raw = raw.masked_fill(~allowed, float("-inf"))
    processed = process_logits(raw.clone(), rows, eos_token_ids)
    chosen = processed.argmax(dim=-1)
    random_rows = [i for i, row in enumerate(rows) if not row.params.greedy]
    if random_rows:
        index = torch.tensor(random_rows, device=raw.device)
        sub = [rows[i] for i in random_rows]
        probs = sampling_probs(processed.index_select(0, index), sub)
        chosen = chosen.index_copy(0, index, _draw(probs, sub))
    return SamplerOutput(chosen.tolist(), _logprobs(raw, chosen, rows))


def process_logits(
    logits: torch.Tensor, rows: Sequence[SampleRow], eos_token_ids: frozenset[int]
) -> torch.Tensor:
    """The history-dependent processors, in place; greedy rows take the argmax of this."""
    apply_logit_bias(logits, rows)
    apply_min_tokens(logits, rows, eos_token_ids)
    apply_penalties(logits, rows)
    return logits


def sampling_probs(logits: torch.Tensor, rows: Sequence[SampleRow]) -> torch.Tensor:
    """(M, vocab) probabilities after temperature, min_p, top-k and top-p (non-greedy rows)."""
    device = logits.device
    temperature = torch.tensor([r.params.temperature for r in rows], device=device)
    logits = logits / temperature[:, None]
    # Which processors run is decided on the host from the params (no device read-back).
    if any(r.params.min_p > 0 for r in rows):
        min_p = torch.tensor([r.params.min_p for r in rows], device=device)
        probs = logits.softmax(-1)
        floor = min_p[:, None] * probs.amax(dim=-1, keepdim=True)
        logits = logits.masked_fill(probs < floor, float("-inf"))
    vocab = logits.shape[1]
    top_k = [r.params.top_k if 0 < r.params.top_k < vocab else vocab for r in rows]
    top_p = torch.tensor([r.params.top_p for r in rows], device=device)
    if min(top_k) < vocab or any(r.params.top_p < 1.0 for r in rows):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        k = torch.tensor(top_k, device=device)
        # Ties with the k-th value are kept (a threshold, like vLLM's).
        kth = sorted_logits.gather(1, (k - 1)[:, None])
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p (keeps at least one).
        before = probs.cumsum(-1) - probs
        sorted_logits = sorted_logits.masked_fill(before >= top_p[:, None], float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    return logits.softmax(-1)


def _draw(probs: torch.Tensor, rows: Sequence[SampleRow]) -> torch.Tensor:
    """One token per row: argmax(p / E) with E ~ Exp(1) picks a token with probability p."""
    noise = torch.empty_like(probs)
    unseeded = [i for i, row in enumerate(rows) if row.params.seed is None]
    if len(unseeded) == len(rows):
        noise.exponential_()
    elif unseeded:
        index = torch.tensor(unseeded, device=probs.device)
        noise.index_copy_(0, index, noise[index].exponential_())
    for i, row in enumerate(rows):
        seed = row.params.seed
        if seed is not None:
            gen = torch.Generator(device=probs.device)
            gen.manual_seed(step_seed(seed, len(row.output_token_ids)))
            noise[i].exponential_(generator=gen)
    # E == 0 would make 0/0 = NaN, which argmax prefers.
    return (probs / noise.clamp_(min=1e-30)).argmax(dim=-1)


def _logprobs(
    raw: torch.Tensor, chosen: torch.Tensor, rows: Sequence[SampleRow]
) -> list[TokenLogprobs | None]:
    want = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
    out: list[TokenLogprobs | None] = [None] * len(rows)
    if not want:
        return out
    index = torch.tensor(want, device=raw.device)
    num_top = [rows[i].params.logprobs or 0 for i in want]
    for i, entry in zip(
        want, token_logprobs(raw.index_select(0, index), chosen[index], num_top), strict=True
    ):
        out[i] = entry
    return out
