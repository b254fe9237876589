"""Structured outputs: seeded samples of a tiny random-weight model under a strict JSON
schema all parse and validate; without the grammar the same model emits no JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from prfaas.engine.llm import LLM
from prfaas.engine.sampling_params import SamplingParams, StructuredOutputs
from tests.conftest import make_tiny_checkpoint

VOCAB = 260  # 3 specials + the 256 byte-level symbols + 1 unused
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 8, "pattern": "^[a-z]+$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "admin": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["x", "y", "z"]}, "maxItems": 3},
    },
    "required": ["name", "age", "admin", "tags"],
    "additionalProperties": False,
}


def _byte_level_tokenizer(folder: Path) -> None:
    """One token per byte (GPT-2's byte-level alphabet), so any JSON text is expressible."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> LLM:
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("bytes"), "llama", vocab_size=VOCAB)
    _byte_level_tokenizer(folder)
    return LLM(str(folder), cache_dir=cache_dir, num_kv_blocks=256)


def _validate(value: Any) -> None:
    assert isinstance(value, dict) and set(value) == set(SCHEMA["required"])
    assert isinstance(value["name"], str) and 1 <= len(value["name"]) <= 8
    assert value["name"].isalpha() and value["name"].islower()
    assert type(value["age"]) is int and 0 <= value["age"] <= 120
    assert isinstance(value["admin"], bool)
    assert isinstance(value["tags"], list) and len(value["tags"]) <= 3
    assert all(t in ("x", "y", "z") for t in value["tags"])


def test_seeded_samples_under_a_strict_schema_all_validate(llm: LLM) -> None:
    structured = StructuredOutputs(json=json.dumps(SCHEMA))
    texts = []
    for seed in (11, 12):
        params = SamplingParams(
            n=10, max_tokens=120, temperature=1.0, seed=seed, structured_outputs=structured
        )
        for completion in llm.generate("Describe a user as JSON:", params)[0].outputs:
            assert completion.finish_reason == "stop", completion.text
            _validate(json.loads(completion.text))
            texts.append(completion.text)
    assert len(texts) == 20 and len(set(texts)) > 10  # sampled, not one fixed answer
    llm.engine.check_integrity()
    assert llm.engine.kv.usage == 0.0


def test_without_the_grammar_the_model_emits_no_json(llm: LLM) -> None:
    params = SamplingParams(n=10, max_tokens=30, temperature=1.0, seed=11)
    outs = llm.generate("Describe a user as JSON:", params)[0].outputs
    assert not any(_parses(o.text) for o in outs)


def test_json_object_mode_gives_an_object(llm: LLM) -> None:
    params = SamplingParams(
        n=4,
        max_tokens=60,
        temperature=0.7,
        seed=5,
        structured_outputs=StructuredOutputs(json_object=True),
    )
    outputs = llm.generate("{}", params)[0].outputs
    assert any(c.finish_reason == "stop" for c in outputs)
    for completion in outputs:
        if completion.finish_reason == "stop":
            assert isinstance(json.loads(completion.text), dict)
        else:  # an object may run past max_tokens; what there is must still be one's prefix
            assert completion.text.startswith("{")


def test_a_schema_that_cannot_be_enforced_is_refused(llm: LLM) -> None:
    bad = SamplingParams(structured_outputs=StructuredOutputs(json='{"type": "nonsense"}'))
    with pytest.raises(ValueError, match="cannot be enforced"):
        llm.generate("x", bad)
    assert not llm.engine.has_unfinished()
    llm.engine.check_integrity()
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputs()
    with pytest.raises(ValueError, match="not valid JSON"):
        StructuredOutputs(json="{")


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_an_aborted_request_leaves_no_grammar_or_logprob_state(llm: LLM) -> None:
    engine = llm.engine
    params = SamplingParams(
        max_tokens=20,
        structured_outputs=StructuredOutputs(json=json.dumps(SCHEMA)),
        prompt_logprobs=2,
    )
    req = engine.add_request(llm.tokenizer.encode("abc"), params)
    engine.check_integrity()
    engine.step()
    engine.abort(req.request_id)
    engine.check_integrity()
    assert not engine.has_unfinished()
