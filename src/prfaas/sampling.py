"""Conversion between sampling parameters on the wire and the engine's SamplingParams."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prfaas.engine.logprobs import TokenLogprobs
from prfaas.engine.sampling_params import SamplingParams, StructuredOutputs
from prfaas.messages import LogprobEntry, SamplingSpec

# Fields with one name and one meaning on both sides (scalars); the rest convert below.
_SAME_FIELDS = (
    "max_tokens", "temperature", "top_k", "top_p", "seed", "ignore_eos",
    "include_stop_str_in_output", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "min_tokens", "min_p", "logprobs", "prompt_logprobs",
)  # fmt: skip


def to_sampling_params(spec: SamplingSpec) -> SamplingParams:
    structured = spec.json_schema is not None or spec.json_object
    return SamplingParams(
        **{name: getattr(spec, name) for name in _SAME_FIELDS},
        stop=tuple(spec.stop),
        stop_token_ids=tuple(spec.stop_token_ids),
        logit_bias=spec.logit_bias,
        structured_outputs=(
            StructuredOutputs(json=spec.json_schema, json_object=spec.json_object)
            if structured
            else None
        ),
    )


def to_spec(params: SamplingParams) -> SamplingSpec:
    """``n`` does not travel: each sequence is its own request on the wire."""
    so = params.structured_outputs
    return SamplingSpec(
        **{name: getattr(params, name) for name in _SAME_FIELDS},
        stop=list(params.stop),
        stop_token_ids=list(params.stop_token_ids),
        logit_bias=dict(params.bias_pairs),
        json_schema=None if so is None else so.json,
        json_object=so is not None and so.json_object,
    )


def to_entries(logprobs: Sequence[TokenLogprobs] | None) -> list[LogprobEntry] | None:
    """The engine's output-token logprobs as they travel in ``TokenEvent``s."""
    return None if logprobs is None else [_entry(e) for e in logprobs]


def to_prompt_entries(
    logprobs: Sequence[TokenLogprobs | None] | None,
) -> list[LogprobEntry | None] | None:
    return None if logprobs is None else [None if e is None else _entry(e) for e in logprobs]


def _entry(e: TokenLogprobs) -> LogprobEntry:
    # Built by us from engine output: no validation on this per-token path.
    return LogprobEntry.model_construct(
        token_id=e.token_id,
        logprob=e.logprob,
        rank=e.rank,
        top_token_ids=list(e.top_token_ids),
        top_logprobs=list(e.top_logprobs),
    )


def logprob_rows(
    entries: Sequence[TokenLogprobs | None], num_top: int
) -> tuple[np.ndarray, np.ndarray]:
    """Logprobs as two arrays for the KV wire (layout in ``messages.KV_FIRST_LOGPROBS_LAYER``)."""
    values = np.zeros((len(entries), 1 + num_top), np.float32)
    ids = np.zeros((len(entries), 2 + num_top), np.int64)
    for i, e in enumerate(entries):
        if e is None:
            continue
        values[i, 0], ids[i, 0], ids[i, 1] = e.logprob, e.token_id, e.rank
        values[i, 1 : 1 + len(e.top_logprobs)] = e.top_logprobs
        ids[i, 2 : 2 + len(e.top_token_ids)] = e.top_token_ids
    return values, ids


def logprobs_of_rows(values: np.ndarray, ids: np.ndarray) -> list[TokenLogprobs | None]:
    """The inverse of ``logprob_rows``; ValueError for arrays that do not pair up."""
    rows, width = values.shape
    if ids.shape != (rows, width + 1):
        raise ValueError(f"logprob arrays {values.shape} and {ids.shape} do not pair up")
    return [
        None
        if t[1] == 0
        else TokenLogprobs(int(t[0]), float(v[0]), int(t[1]), tuple(t[2:]), tuple(v[1:]))
        for v, t in zip(values.tolist(), ids.tolist(), strict=True)
    ]
