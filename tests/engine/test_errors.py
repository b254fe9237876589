"""Bad input gets a clear error and leaves the engine healthy."""

from __future__ import annotations

from pathlib import Path

import pytest

from prfaas.engine.sampling_params import SamplingParams
from tests.engine.helpers import make_engine


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 0},
        {"temperature": -1.0},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -2},
        {"stop": ["x"] * 17},
        {"stop": [""]},
        {"stop_token_ids": [-1]},
    ],
)
def test_invalid_sampling_params(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_bad_prompts_are_refused_and_engine_stays_healthy(
    tiny_llama: Path, cache_dir: Path
) -> None:
    engine = make_engine(tiny_llama, cache_dir, max_model_len=128)
    params = SamplingParams(max_tokens=8, temperature=0)
    with pytest.raises(ValueError, match="empty"):
        engine.add_request([], params)
    with pytest.raises(ValueError, match="maximum context length is 128"):
        engine.add_request(list(range(3, 200)) * 1, params)
    with pytest.raises(ValueError, match="maximum context length"):
        engine.add_request([5] * 100, SamplingParams(max_tokens=64))
    with pytest.raises(ValueError, match="token ids"):
        engine.add_request([5, 100000], params)
    engine.add_request([5, 6, 7], params, request_id="x")
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request([5, 6, 7], params, request_id="x")
    engine.check_integrity()
    while engine.has_unfinished():
        engine.step()
    engine.check_integrity()
    assert engine.kv.usage == 0.0


def test_abort_frees_blocks(tiny_llama: Path, cache_dir: Path) -> None:
    engine = make_engine(tiny_llama, cache_dir)
    req = engine.add_request(list(range(3, 60)), SamplingParams(max_tokens=50, temperature=0))
    engine.step()
    engine.step()
    engine.abort(req.request_id)
    assert req.status.value == "aborted" and req.finish_reason == "abort"
    engine.check_integrity()
    assert not engine.has_unfinished() and engine.kv.usage == 0.0
