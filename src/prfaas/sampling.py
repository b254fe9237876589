"""Conversion between sampling parameters on the wire and the engine's SamplingParams."""

from __future__ import annotations

from prfaas.engine.sampling_params import SamplingParams
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
    )


def to_spec(params: SamplingParams) -> SamplingSpec:
    return SamplingSpec(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        seed=params.seed,
        stop=list(params.stop),
        stop_token_ids=list(params.stop_token_ids),
        ignore_eos=params.ignore_eos,
    )
