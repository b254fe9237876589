"""Conversion between sampling parameters on the wire and the engine's SamplingParams."""

from __future__ import annotations

from prfaas.engine.sampling_params import SamplingParams, StructuredOutputs
from prfaas.messages import SamplingSpec


def to_sampling_params(spec: SamplingSpec) -> SamplingParams:
    return SamplingParams(
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        top_k=spec.top_k,
        top_p=spec.top_p,
        seed=spec.seed,
        stop=tuple(spec.stop),
        stop_token_ids=tuple(spec.stop_token_ids),
        ignore_eos=spec.ignore_eos,
        include_stop_str_in_output=spec.include_stop_str_in_output,
        presence_penalty=spec.presence_penalty,
        frequency_penalty=spec.frequency_penalty,
        repetition_penalty=spec.repetition_penalty,
        min_tokens=spec.min_tokens,
        min_p=spec.min_p,
        logit_bias=spec.logit_bias,
        logprobs=spec.logprobs,
        prompt_logprobs=spec.prompt_logprobs,
        structured_outputs=(
            StructuredOutputs(json=spec.json_schema, json_object=spec.json_object)
            if spec.json_schema is not None or spec.json_object
            else None
        ),
    )


def to_spec(params: SamplingParams) -> SamplingSpec:
    """``n`` does not travel: each sequence is its own request on the wire."""
    so = params.structured_outputs
    return SamplingSpec(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        seed=params.seed,
        stop=list(params.stop),
        stop_token_ids=list(params.stop_token_ids),
        ignore_eos=params.ignore_eos,
        include_stop_str_in_output=params.include_stop_str_in_output,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty,
        min_tokens=params.min_tokens,
        min_p=params.min_p,
        logit_bias=dict(params.bias_pairs),
        logprobs=params.logprobs,
        prompt_logprobs=params.prompt_logprobs,
        json_schema=None if so is None else so.json,
        json_object=so is not None and so.json_object,
    )
