"""Decode failover on the engine side (``engine/resume.py``): a request resumed from the
first k outputs of a run streams exactly the rest of that run, for every sampling feature
whose state depends on the output so far (penalties, min_tokens, max_tokens, seeded
positions, stop strings, grammars, the detokenizer's offsets).

A tiny random-weight model with a byte-level tokenizer (one token per byte), so stop strings
and JSON grammars can be expressed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from prfaas.config import EngineConfig
from prfaas.engine.engine import Engine
from prfaas.engine.sampling_params import SamplingParams, StructuredOutputs
from tests.conftest import make_tiny_checkpoint
from tests.engine.test_structured_outputs import SCHEMA, VOCAB, _byte_level_tokenizer, _validate

PROMPT = [ord(c) % 200 + 3 for c in "Describe a user as JSON:"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Engine:
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("bytes"), "llama", vocab_size=VOCAB)
    _byte_level_tokenizer(folder)
    return Engine(EngineConfig(model=str(folder), cache_dir=cache_dir, num_kv_blocks=256))


Run = tuple[list[int], list[str], str | None]


def run(engine: Engine, params: SamplingParams, rid: str, resumed: list[int] | None = None) -> Run:
    """Tokens, text per token and finish reason of one request run to its end."""
    engine.add_request(PROMPT, params, rid, resumed=resumed or ())
    tokens: list[int] = []
    texts: list[str] = []
    reason = None
    while engine.has_unfinished():
        for d in engine.step():
            tokens += d.new_token_ids
            texts.append(d.new_text)
            reason = d.finish_reason if d.finished else reason
    engine.check_integrity()
    return tokens, texts, reason


def assert_resumes(engine: Engine, params: SamplingParams, cuts: list[int]) -> Run:
    full = run(engine, params, "full")
    tokens, texts, reason = full
    for k in cuts:
        assert k < len(tokens), (k, len(tokens))
        rest, rest_texts, rest_reason = run(engine, params, f"cut{k}", tokens[:k])
        assert tokens[:k] + rest == tokens, k
        assert "".join(texts[:k]) + "".join(rest_texts) == "".join(texts), k
        assert rest_reason == reason
    return full


def test_greedy_with_penalties_and_min_tokens_resumes_exactly(engine: Engine) -> None:
    params = SamplingParams(
        max_tokens=40,
        temperature=0.0,
        frequency_penalty=0.8,
        presence_penalty=0.5,
        repetition_penalty=1.3,
        min_tokens=30,
    )
    tokens, _, _ = assert_resumes(engine, params, [1, 7, 29, 39])
    assert len(set(tokens)) > 5  # the penalties shape the output; not one repeated token


def test_seeded_sampling_resumes_at_the_same_positions(engine: Engine) -> None:
    params = SamplingParams(max_tokens=30, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    assert_resumes(engine, params, [1, 13, 29])


def test_a_stop_string_across_the_cut_is_found(engine: Engine) -> None:
    # Lower-case letters only (a token is a byte here), varied by a frequency penalty.
    letters = engine.tokenizer.convert_tokens_to_ids(list("abcdefghijklmnopqrstuvwxyz"))
    free = SamplingParams(
        max_tokens=30,
        temperature=0.0,
        ignore_eos=True,
        frequency_penalty=2.0,
        logit_bias=dict.fromkeys(letters, 50.0),
    )
    _, texts, _ = run(engine, free, "free")
    text = "".join(texts)
    stop = text[8:11]
    assert stop.isalpha() and text.find(stop) == 8, text
    params = dataclasses.replace(free, stop=[stop])
    _, texts, reason = assert_resumes(engine, params, [7, 9, 10])
    # Streamed deltas end before the stop string's last character (its first ones went out
    # before it was complete: the engine's streaming rule, with or without a failover).
    streamed = "".join(texts)
    assert reason == "stop" and text.startswith(streamed) and 8 <= len(streamed) < 11


def test_a_grammar_resumes_mid_object(engine: Engine) -> None:
    structured = StructuredOutputs(json=json.dumps(SCHEMA))
    params = SamplingParams(max_tokens=120, temperature=1.0, seed=11, structured_outputs=structured)
    _, texts, reason = assert_resumes(engine, params, [3, 12])
    assert reason == "stop"
    _validate(json.loads("".join(texts)))


def test_outputs_it_cannot_go_on_from_are_refused_holding_nothing(engine: Engine) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.add_request(PROMPT, params, "over", resumed=[5, 6, 7, 8])
    with pytest.raises(ValueError, match="resumed token ids"):
        engine.add_request(PROMPT, params, "vocab", resumed=[VOCAB + 5])
    logprobs = SamplingParams(max_tokens=4, temperature=0.0, prompt_logprobs=1)
    with pytest.raises(ValueError, match="prompt_logprobs"):
        engine.add_request(PROMPT, logprobs, "again", resumed=[5])
    engine.check_integrity()
    assert not engine.has_unfinished()
