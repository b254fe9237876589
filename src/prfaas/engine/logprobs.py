"""Log-probabilities of chosen tokens and their top alternatives.

Like vLLM's default (``logprobs_mode="raw_logprobs"``), they are the log-softmax of the raw
model logits: before logit bias, penalties, temperature and the top-k/top-p/min-p filters.
So a token's logprob is the model's, whatever sampling settings picked it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

LOGPROB_SLICE_ROWS = 256  # prompt rows turned into logits at a time (bounds the memory)


@dataclass(frozen=True)
class TokenLogprobs:
    """One position: the chosen token's logprob and rank (1 = the most likely), and the top
    ``k`` alternatives, most likely first."""

    token_id: int
    logprob: float
    rank: int
    top_token_ids: tuple[int, ...] = ()
    top_logprobs: tuple[float, ...] = ()


@dataclass(frozen=True)
class Logprob:
    """One entry of vLLM's per-position ``dict[token_id, Logprob]``."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, num_top: list[int]
) -> list[TokenLogprobs]:
    """logits (M, vocab) float32 raw; token_ids (M,) the chosen tokens; ``num_top[i]`` the
    alternatives row i asks for. One device-to-host transfer per list."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, token_ids[:, None])  # (M, 1)
    ranks = (logp > chosen).sum(dim=1) + 1
    k = max(num_top, default=0)
    top_vals, top_ids = logp.topk(k, dim=-1) if k > 0 else (logp[:, :0], token_ids[:, None][:, :0])
    ids, vals = top_ids.tolist(), top_vals.tolist()
    return [
        TokenLogprobs(tok, lp, rank, tuple(ids[i][: num_top[i]]), tuple(vals[i][: num_top[i]]))
        for i, (tok, lp, rank) in enumerate(
            zip(token_ids.tolist(), chosen[:, 0].tolist(), ranks.tolist(), strict=True)
        )
    ]


def prompt_token_logprobs(
    compute_logits: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    targets: list[int],
    num_top: int,
) -> list[TokenLogprobs]:
    """hidden (M, hidden_size): the rows whose next tokens are ``targets`` (M of them)."""
    out: list[TokenLogprobs] = []
    target = torch.tensor(targets, dtype=torch.int64, device=hidden.device)
    for start in range(0, len(targets), LOGPROB_SLICE_ROWS):
        end = min(start + LOGPROB_SLICE_ROWS, len(targets))
        logits = compute_logits(hidden[start:end])
        out.extend(token_logprobs(logits, target[start:end], [num_top] * (end - start)))
    return out


def as_vllm_dict(entry: TokenLogprobs, decode: Callable[[int], str]) -> dict[int, Logprob]:
    """vLLM's shape: the chosen token plus its top alternatives, keyed by token id."""
    out = {entry.token_id: Logprob(entry.logprob, entry.rank, decode(entry.token_id))}
    for rank, (tok, lp) in enumerate(zip(entry.top_token_ids, entry.top_logprobs, strict=True)):
        out.setdefault(tok, Logprob(lp, rank + 1, decode(tok)))
    return out


def decoder(tokenizer: Any) -> Callable[[int], str]:
    def decode(token_id: int) -> str:
        return str(tokenizer.decode([token_id]))

    return decode
