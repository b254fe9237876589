"""Sampling parameters, validated on construction (the engine trusts them afterwards)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_LOGIT_BIAS = 300  # entries, as the OpenAI API allows
MAX_LOGIT_BIAS_VALUE = 100.0
MAX_LOGPROBS = 20  # alternatives per token
MAX_N = 16  # sequences per prompt
MAX_SCHEMA_CHARS = 65536


@dataclass(frozen=True)
class StructuredOutputs:
    """Constrain the output: ``json`` is a JSON schema (as JSON text) the output must
    validate against; ``json_object`` asks for any JSON object. Exactly one is set."""

    json: str | None = None
    json_object: bool = False

    def __post_init__(self) -> None:
        if (self.json is None) == (not self.json_object):
            raise ValueError("structured outputs take exactly one of json and json_object")
        if self.json is not None:
            if len(self.json) > MAX_SCHEMA_CHARS:
                raise ValueError(f"a JSON schema is at most {MAX_SCHEMA_CHARS} characters")
            try:
                schema = json.loads(self.json)
            except ValueError as e:
                raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
            if not isinstance(schema, dict):
                raise ValueError("a JSON schema must be a JSON object")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token, and when to stop.

    ``temperature == 0`` is greedy. ``top_k <= 0`` and ``top_p == 1`` disable those filters.
    ``seed`` makes one request's sampling reproducible whatever else is batched with it.

    The extras follow vLLM: ``presence_penalty`` and ``frequency_penalty`` are subtracted
    from the logits of tokens already generated (once, and once per occurrence);
    ``repetition_penalty`` divides positive and multiplies negative logits of tokens in the
    prompt or the output; ``min_tokens`` masks EOS and ``stop_token_ids`` (and defers stop
    strings) until that many tokens are out; ``min_p`` drops tokens whose probability is
    below ``min_p`` times the top one; ``logit_bias`` maps token ids to a bias added to the
    logits (ids are checked against the vocabulary when a request is admitted).
    ``logprobs`` (per output token) and ``prompt_logprobs`` (per prompt token) ask for that
    many top alternatives, 0 for the chosen token alone; ``n`` sequences per prompt.
    ``structured_outputs`` masks every token the grammar does not allow (``grammar.py``).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    min_p: float = 0.0
    # token id -> bias; stored as (token id, bias) pairs sorted by id (``bias_pairs``).
    logit_bias: Mapping[int, float] | tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    n: int = 1
    structured_outputs: StructuredOutputs | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "logit_bias", _bias_pairs(self.logit_bias))
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_STRING_CHARS:
                raise ValueError(f"stop strings must be 1..{MAX_STOP_STRING_CHARS} chars")
        for t in self.stop_token_ids:
            if not isinstance(t, int) or t < 0:
                raise ValueError(f"stop_token_ids must be non-negative integers, got {t!r}")
        self._check_extras()

    def _check_extras(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {value}")
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise ValueError(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}")
        if not isinstance(self.min_tokens, int) or not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"min_tokens must be an integer in [0, max_tokens={self.max_tokens}], "
                f"got {self.min_tokens!r}"
            )
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or not 0 <= value <= MAX_LOGPROBS):
                raise ValueError(f"{name} must be an integer in [0, {MAX_LOGPROBS}], got {value!r}")
        if not isinstance(self.n, int) or not 1 <= self.n <= MAX_N:
            raise ValueError(f"n must be an integer in [1, {MAX_N}], got {self.n!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` as normalised on construction."""
        assert isinstance(self.logit_bias, tuple)
        return self.logit_bias

    @property
    def has_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )


def _bias_pairs(
    bias: Mapping[int, float] | tuple[tuple[int, float], ...],
) -> tuple[tuple[int, float], ...]:
    items = list(bias.items()) if isinstance(bias, Mapping) else list(bias)
    if len(items) > MAX_LOGIT_BIAS:
        raise ValueError(f"logit_bias holds at most {MAX_LOGIT_BIAS} entries, got {len(items)}")
    pairs: dict[int, float] = {}
    for item in items:
        token, value = item
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise ValueError(f"logit_bias keys must be non-negative token ids, got {token!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"logit_bias values must be numbers, got {value!r}")
        value = float(value)
        if not math.isfinite(value) or abs(value) > MAX_LOGIT_BIAS_VALUE:
            raise ValueError(f"logit_bias values must be in [-100, 100], got {value}")
        pairs[token] = value
    return tuple(sorted(pairs.items()))


def check_for_model(params: SamplingParams, vocab_size: int, prompt_logprobs: bool) -> None:
    """Refuse (ValueError) what this model cannot honour: token ids outside its vocabulary,
    prompt logprobs where the runner cannot give them (``prompt_logprobs`` False)."""
    bad = [t for t, _ in params.bias_pairs if t >= vocab_size]
    if bad:
        raise ValueError(f"logit_bias token ids must be in [0, {vocab_size}), got {bad[:5]}")
    bad = [t for t in params.stop_token_ids if t >= vocab_size]
    if bad:
        raise ValueError(f"stop_token_ids must be in [0, {vocab_size}), got {bad[:5]}")
    if params.prompt_logprobs is not None and not prompt_logprobs:
        raise ValueError("prompt_logprobs are not supported for this model")
