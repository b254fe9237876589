"""SamplingParams refuse bad values at construction; the extras survive the wire."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from prfaas.engine.sampling_params import SamplingParams, StructuredOutputs, check_for_model
from prfaas.messages import SamplingSpec
from prfaas.sampling import to_sampling_params, to_spec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"presence_penalty": 2.5}, "presence_penalty must be in"),
        ({"frequency_penalty": -3.0}, "frequency_penalty must be in"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be in"),
        ({"repetition_penalty": 2.5}, "repetition_penalty must be in"),
        ({"min_tokens": -1}, "min_tokens must be"),
        ({"min_tokens": 17, "max_tokens": 16}, "min_tokens must be"),
        ({"min_p": 1.5}, "min_p must be in"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias keys"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias keys"),
        ({"logit_bias": {5: 101.0}}, "logit_bias values"),
        ({"logit_bias": {5: float("nan")}}, "logit_bias values"),
        ({"logit_bias": {i: 1.0 for i in range(301)}}, "at most 300"),
        ({"logprobs": 21}, "logprobs must be"),
        ({"prompt_logprobs": -1}, "prompt_logprobs must be"),
        ({"n": 0}, "n must be"),
        ({"n": 17}, "n must be"),
    ],
)
def test_bad_values_are_refused_by_name(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_logit_bias_is_normalised_and_hashable() -> None:
    a = SamplingParams(logit_bias={7: 1, 3: -2.5})
    b = SamplingParams(logit_bias=((3, -2.5), (7, 1.0)))
    assert a == b and a.logit_bias == ((3, -2.5), (7, 1.0))
    assert hash(a) == hash(b)


def test_token_ids_are_checked_against_the_vocabulary() -> None:
    check_for_model(SamplingParams(logit_bias={255: 1.0}), 256, True)
    with pytest.raises(ValueError, match=r"logit_bias token ids must be in \[0, 256\)"):
        check_for_model(SamplingParams(logit_bias={256: 1.0}), 256, True)
    with pytest.raises(ValueError, match="stop_token_ids must be in"):
        check_for_model(SamplingParams(stop_token_ids=(300,)), 256, True)
    with pytest.raises(ValueError, match="prompt_logprobs are not supported"):
        check_for_model(SamplingParams(prompt_logprobs=0), 256, False)


def test_the_extras_round_trip_through_the_wire() -> None:
    params = SamplingParams(
        max_tokens=9,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        repetition_penalty=1.2,
        min_tokens=3,
        min_p=0.1,
        logit_bias={17: -100.0, 4: 2.5},
        logprobs=5,
        prompt_logprobs=0,
        include_stop_str_in_output=True,
        structured_outputs=StructuredOutputs(json='{"type": "object"}'),
    )
    spec = SamplingSpec.decode(to_spec(params).encode())
    assert to_sampling_params(spec) == params
    json_mode = SamplingParams(structured_outputs=StructuredOutputs(json_object=True))
    assert to_sampling_params(SamplingSpec.decode(to_spec(json_mode).encode())) == json_mode


@pytest.mark.parametrize(
    "field",
    [
        {"presence_penalty": 2.1},
        {"repetition_penalty": 0.0},
        {"min_p": -0.1},
        {"logit_bias": {str(i): 1.0 for i in range(301)}},
        {"logit_bias": {"3": 100.5}},
        {"logit_bias": {"-3": 1.0}},
        {"logprobs": 21},
    ],
)
def test_the_wire_bounds_the_extras(field: dict[str, Any]) -> None:
    import json

    with pytest.raises(ValidationError):
        SamplingSpec.decode(json.dumps(field))
