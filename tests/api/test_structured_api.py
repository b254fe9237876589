"""``response_format`` through the API: a strict ``json_schema`` over 50 seeded prompts all
parse and validate; ``json_object`` gives objects. The model is the tiny random-weight one
with a byte-level tokenizer (any JSON text is expressible), so only the grammar makes JSON.
On both engines: the reference engine's grammar masks, and vLLM's own structured outputs
(`prfaas serve --engine vllm`; these prompts take the remote path there)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from tests.api.conftest import ENGINES, Served, byte_level_server
from tests.engine.test_structured_outputs import SCHEMA, _validate

NUM_PROMPTS = 50
MAX_TOKENS = 120  # the schema's longest object is well under this


@pytest.fixture(scope="module", params=ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> Iterator[Served]:
    yield from byte_level_server(request, tmp_path_factory, cache_dir)


def test_strict_json_schema_over_seeded_prompts(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "user", "schema": SCHEMA, "strict": True}}

    def ask(i: int) -> str:
        out = client.chat.completions.create(
            model="bytes",
            messages=[{"role": "user", "content": f"Describe user number {i} as JSON."}],
            max_tokens=MAX_TOKENS,
            temperature=1.0,
            seed=i,
            response_format=fmt,  # type: ignore[arg-type]
        )
        assert out.choices[0].finish_reason == "stop", out.choices[0].message.content
        return out.choices[0].message.content or ""

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(ask, range(NUM_PROMPTS)))
    for text in texts:
        _validate(json.loads(text))
    assert len(set(texts)) > NUM_PROMPTS // 2  # sampled, not one fixed answer


def test_json_object_mode(client: openai.OpenAI) -> None:
    stopped = 0
    for seed in range(4):
        chat = client.chat.completions.create(
            model="bytes",
            messages=[{"role": "user", "content": "JSON please"}],
            max_tokens=60,
            temperature=0.7,
            seed=seed,
            response_format={"type": "json_object"},
        )
        content = chat.choices[0].message.content or ""
        if chat.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(content), dict)
            stopped += 1
        else:  # ran past max_tokens: still an object's prefix
            assert content.startswith("{")
    assert stopped > 0
