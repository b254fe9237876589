"""What the offline API returns, in the shape users know from vLLM."""

from __future__ import annotations

from dataclasses import dataclass, field

from prfaas.engine.logprobs import Logprob, TokenLogprobs

# vLLM's shapes: per position, the chosen token and its top alternatives by token id.
SampleLogprobs = list[dict[int, Logprob]]
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop", "length", "abort" or None while running
    stop_reason: int | str | None = None
    logprobs: SampleLogprobs | None = None  # when SamplingParams.logprobs is set


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    prompt_logprobs: PromptLogprobs | None = None  # when SamplingParams.prompt_logprobs is set


@dataclass
class TokenDelta:
    """What one engine step produced for one request (the streaming unit)."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # One entry per new token when the request asked for logprobs.
    logprobs: list[TokenLogprobs] | None = None
    # With a request's first token, when it asked for prompt logprobs (entry 0 is None).
    prompt_logprobs: list[TokenLogprobs | None] | None = None
