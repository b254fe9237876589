"""Our sampling spec as vLLM's ``SamplingParams``, and vLLM's logprobs back as ours.

Every field of ``messages.SamplingSpec`` passes through to vLLM's own implementation of it
(penalties, ``min_tokens``, ``min_p``, ``logit_bias``, seeds, stops, logprobs, prompt
logprobs, structured outputs through vLLM's grammar backend); tool calls reach vLLM as the
JSON schema the gateway derived from ``tool_choice``. Both engines report raw logprobs
(before bias, penalties and temperature: vLLM's default ``logprobs_mode``).

What a role changes: a prefill instance only computes the prompt (``max_tokens=1``, its token
is dropped: the decode instance computes the last prompt token itself and samples the first
output token), so it gets no logprobs, grammar or penalties to pay for. A resumed stream
(decode failover) is a new vLLM request whose prompt ends with the tokens already streamed;
what vLLM cannot carry across that boundary is refused (``resume_refusal``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prfaas.messages import LogprobEntry, SamplingSpec

if TYPE_CHECKING:
    from vllm import SamplingParams


class _Logprob(Protocol):  # vLLM's ``Logprob``
    logprob: float
    rank: int | None


# vLLM's per-position logprobs: the chosen token and the top-k, keyed by token id.
Position = Mapping[int, _Logprob]


def sampling_params(
    spec: SamplingSpec, *, prefill_only: bool = False, num_resumed: int = 0
) -> SamplingParams:
    """vLLM's params for ours, deltas streamed. ``prefill_only``: a prefill instance's
    request (one token, dropped). ``num_resumed``: output tokens already streamed by another
    instance, now part of the prompt (they count against ``max_tokens`` and ``min_tokens``)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    structured = None
    if not prefill_only and (spec.json_schema is not None or spec.json_object):
        # Compiled without free whitespace by the engine's backend (launch.engine_args).
        structured = StructuredOutputsParams(
            json=spec.json_schema, json_object=spec.json_object or None
        )
    return SamplingParams(
        max_tokens=1 if prefill_only else spec.max_tokens - num_resumed,
        temperature=spec.temperature,
        top_k=spec.top_k or -1,
        top_p=spec.top_p,
        seed=spec.seed,
        stop=list(spec.stop) or None,
        stop_token_ids=list(spec.stop_token_ids) or None,
        ignore_eos=spec.ignore_eos,
        presence_penalty=0.0 if prefill_only else spec.presence_penalty,
        frequency_penalty=0.0 if prefill_only else spec.frequency_penalty,
        repetition_penalty=1.0 if prefill_only else spec.repetition_penalty,
        min_tokens=0 if prefill_only else max(0, spec.min_tokens - num_resumed),
        min_p=spec.min_p,
        logit_bias=None if prefill_only else dict(spec.logit_bias) or None,
        logprobs=None if prefill_only else spec.logprobs,
        prompt_logprobs=None if prefill_only or num_resumed else spec.prompt_logprobs,
        include_stop_str_in_output=spec.include_stop_str_in_output,
        structured_outputs=structured,
        output_kind=RequestOutputKind.DELTA,
    )


def resume_refusal(spec: SamplingSpec, num_resumed: int) -> str | None:
    """Why vLLM cannot go on from ``num_resumed`` streamed tokens as if it had sampled them
    (None: it can). vLLM takes them as prompt: its presence and frequency penalties count
    output tokens only, and its grammar starts at the first output token."""
    if num_resumed >= spec.max_tokens:
        return f"{num_resumed} tokens resumed leave none of max_tokens={spec.max_tokens}"
    refused = [
        name
        for name, used in (
            ("presence_penalty", spec.presence_penalty != 0.0),
            ("frequency_penalty", spec.frequency_penalty != 0.0),
            ("json_schema", spec.json_schema is not None),
            ("json_object", spec.json_object),
        )
        if used
    ]
    if refused:
        return f"a vLLM instance cannot resume a stream that uses {', '.join(refused)}"
    return None


def logprob_entries(
    positions: Sequence[Position], token_ids: Sequence[int], num_top: int
) -> list[LogprobEntry]:
    """vLLM's output logprobs (one position per token in ``token_ids``) as ours."""
    return [_entry(p, t, num_top) for p, t in zip(positions, token_ids, strict=True)]


def prompt_logprob_entries(
    positions: Sequence[Position | None], prompt_token_ids: Sequence[int], num_top: int
) -> list[LogprobEntry | None]:
    """vLLM's prompt logprobs (the first position None: nothing precedes it) as ours."""
    return [
        None if p is None else _entry(p, t, num_top)
        for p, t in zip(positions, prompt_token_ids, strict=True)
    ]


def _entry(position: Position, token_id: int, num_top: int) -> LogprobEntry:
    chosen = position[token_id]
    # vLLM's dict holds the top ``num_top`` (rank 1..num_top) plus the chosen token if it
    # ranks lower; our entry lists the top alone, most likely first.
    top: list[tuple[int, Any]] = sorted(
        ((t, lp) for t, lp in position.items() if lp.rank is not None and lp.rank <= num_top),
        key=lambda item: item[1].rank,
    )
    return LogprobEntry.model_construct(
        token_id=token_id,
        logprob=chosen.logprob,
        rank=chosen.rank or 1,
        top_token_ids=[t for t, _ in top],
        top_logprobs=[lp.logprob for _, lp in top],
    )
