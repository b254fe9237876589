"""Decode failover on the engine side: a request that goes on with output another instance
began (its stream stalled or its worker died).

The tokens already streamed become the request's output before it is queued, as if this
engine had sampled them: the detokenizer and the grammar advance over them, so stop strings,
``min_tokens``/``max_tokens``, penalties, seeded positions and the text offset all go on from
there. The scheduler then prefills prompt + outputs (as after a preemption) and samples the
next token, so a greedy request streams exactly what it would have without the failover.
"""

from __future__ import annotations

from collections.abc import Sequence

from prfaas.engine.detokenizer import IncrementalDetokenizer
from prfaas.engine.request import Request
from prfaas.engine.sampling_params import SamplingParams
from prfaas.engine.sampling_state import SamplingState


def check_resumable(params: SamplingParams, token_ids: Sequence[int], vocab_size: int) -> None:
    """Raise ValueError for outputs this engine cannot go on from (nothing is queued yet)."""
    if not token_ids:
        return
    if len(token_ids) >= params.max_tokens:
        raise ValueError(
            f"{len(token_ids)} resumed tokens leave nothing of max_tokens={params.max_tokens}"
        )
    if any(not 0 <= t < vocab_size for t in token_ids):
        raise ValueError(f"resumed token ids must be in [0, {vocab_size})")
    if params.prompt_logprobs is not None:
        raise ValueError("prompt_logprobs came with the first token; a resume cannot ask again")


def resume_outputs(
    req: Request,
    detok: IncrementalDetokenizer,
    sampling: SamplingState,
    token_ids: Sequence[int],
) -> None:
    """Append ``token_ids`` to a new, not yet queued request's output (checked by
    ``check_resumable``). Its first-token time stays unset: this engine's first token is the
    next one it samples."""
    for token_id in token_ids:
        req.token_ids.append(token_id)
        req.output_token_ids.append(token_id)
        detok.add(token_id)
    sampling.on_resumed(req)
