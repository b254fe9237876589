"""Every field of the OpenAI request schema, as the official client's own types declare it,
is either honoured or refused with a 400 naming it, for chat and completions alike.

The walk runs against the fake tier (``FakeBackend``, why: it records the ``SamplingSpec``
each request became, so each honoured field is checked to arrive with its meaning; the
engine's own tests check what the spec does). A field the client adds in a later version and
this table does not classify fails ``test_every_schema_field_is_classified``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from openai.types import completion_create_params as completion_params
from openai.types.chat import completion_create_params as chat_params

from prfaas.gateway.backend import GenerationRequest
from tests.gateway.conftest import FakeBackend, ServerThread

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
BASE = {
    CHAT: {"messages": [{"role": "user", "content": "w5 w6"}], "max_tokens": 4},
    COMPLETIONS: {"prompt": "w5 w6", "max_tokens": 4},
}
Check = Callable[[list[GenerationRequest], dict[str, Any]], bool]


def spec(**want: Any) -> Check:
    """The request's SamplingSpec carries these values."""
    return lambda reqs, body: all(getattr(reqs[-1].params, k) == v for k, v in want.items())


def anything(reqs: list[GenerationRequest], body: dict[str, Any]) -> bool:
    return True


# Honoured on both endpoints: the value sent, and what must follow from it.
SHARED: dict[str, tuple[Any, Check]] = {
    "model": ("fake", lambda reqs, body: body["model"] == "fake"),
    "max_tokens": (3, spec(max_tokens=3)),
    "temperature": (0.5, spec(temperature=0.5)),
    "top_p": (0.5, spec(top_p=0.5)),
    "seed": (7, spec(seed=7)),
    "stop": (["w9"], spec(stop=["w9"])),
    "n": (2, lambda reqs, body: len(body["choices"]) == 2 and len(reqs) == 2),
    "stream": (True, lambda reqs, body: body["streamed"]),
    "stream_options": (
        {"include_usage": True},
        lambda reqs, body: body["streamed"] and body["usage"]["completion_tokens"] == 4,
    ),
    "presence_penalty": (1.5, spec(presence_penalty=1.5)),
    "frequency_penalty": (-0.5, spec(frequency_penalty=-0.5)),
    "logit_bias": ({"9": 5.0, "11": -100}, spec(logit_bias={9: 5.0, 11: -100.0})),
    "user": ("someone", anything),  # an end-user id, documented as informational only
    # vLLM's extensions
    "top_k": (5, spec(top_k=5)),
    "min_p": (0.1, spec(min_p=0.1)),
    "repetition_penalty": (1.2, spec(repetition_penalty=1.2)),
    "min_tokens": (2, spec(min_tokens=2)),
    "stop_token_ids": ([9], spec(stop_token_ids=[9])),
    "ignore_eos": (True, spec(ignore_eos=True)),
    "include_stop_str_in_output": (True, spec(include_stop_str_in_output=True)),
}
HONOURED = {
    CHAT: {
        **SHARED,
        "messages": (
            [{"role": "system", "content": "w7"}, {"role": "user", "content": "w8"}],
            lambda reqs, body: len(reqs[-1].prompt_token_ids) == 2,
        ),
        "max_completion_tokens": (2, spec(max_tokens=2)),
        "logprobs": (True, spec(logprobs=0)),
        "top_logprobs": (3, spec(logprobs=3)),  # sent with logprobs: true
        "response_format": (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            spec(json_schema='{"type": "object"}'),
        ),
        "store": (False, anything),  # nothing is stored; true is refused
    },
    COMPLETIONS: {
        **SHARED,
        "prompt": (["w5", "w6 w7"], lambda reqs, body: len(body["choices"]) == 2),
        "logprobs": (2, spec(logprobs=2)),
        "echo": (True, lambda reqs, body: body["choices"][0]["text"].startswith("w5 w6")),
    },
}
# Refused with a 400 whose ``param`` names the field (a value the field could take).
REFUSED = {
    CHAT: {
        "audio": {"voice": "alloy", "format": "wav"},
        "function_call": "auto",
        "functions": [{"name": "f", "parameters": {}}],
        "metadata": {"k": "v"},
        "modalities": ["text"],
        "moderation": {"enabled": True},
        "parallel_tool_calls": False,
        "prediction": {"type": "content", "content": "w5"},
        "prompt_cache_key": "k",
        "prompt_cache_options": {"ttl": "5m"},
        "prompt_cache_retention": "24h",
        "reasoning_effort": "low",
        "safety_identifier": "someone",
        "service_tier": "auto",
        "store": True,
        # Refused here: this model's chat template knows no tools (test_tools_api.py has one
        # that does); tool_choice without tools is refused on any model.
        "tool_choice": "auto",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "verbosity": "low",
        "web_search_options": {},
    },
    COMPLETIONS: {"best_of": 2, "suffix": "w9"},
}


def schema_fields(module: Any) -> set[str]:
    keys: set[str] = set()
    for name in ("CompletionCreateParamsNonStreaming", "CompletionCreateParamsStreaming"):
        keys |= set(getattr(module, name).__annotations__)
    return keys


def post(server: ServerThread, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    r = httpx.post(f"{server.base_url}{path}", json=body, timeout=30)
    if not body.get("stream") or r.status_code != 200:
        return r.status_code, r.json()
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in r.text.splitlines()
        if line.startswith("data: {")
    ]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    indices = {c["index"] for ch in chunks for c in ch["choices"]}
    return 200, {
        "streamed": True,
        "model": chunks[0]["model"],
        "choices": sorted(indices),
        "usage": usage[-1] if usage else None,
    }


@pytest.mark.parametrize(
    ("path", "module"), [(CHAT, chat_params), (COMPLETIONS, completion_params)]
)
def test_every_schema_field_is_classified(path: str, module: Any) -> None:
    classified = set(HONOURED[path]) | set(REFUSED[path])
    assert schema_fields(module) - classified == set()


CASES = [(p, f) for p in (CHAT, COMPLETIONS) for f in sorted(HONOURED[p])]


@pytest.mark.parametrize(("path", "field"), CASES)
def test_honoured_field(
    fake_server: tuple[FakeBackend, ServerThread], path: str, field: str
) -> None:
    backend, server = fake_server
    value, check = HONOURED[path][field]
    body = {**BASE[path], field: value}
    if field == "top_logprobs":
        body["logprobs"] = True
    if field == "stream_options":
        body["stream"] = True
    before = len(backend.submitted)
    status, answer = post(server, path, body)
    assert status == 200, answer
    assert check(backend.submitted[before:], answer), (answer, backend.submitted[before:])


REFUSED_CASES = [(p, f) for p in (CHAT, COMPLETIONS) for f in sorted(REFUSED[p])]


@pytest.mark.parametrize(("path", "field"), REFUSED_CASES)
def test_refused_field_is_named(
    fake_server: tuple[FakeBackend, ServerThread], path: str, field: str
) -> None:
    backend, server = fake_server
    before = len(backend.submitted)
    status, answer = post(server, path, {**BASE[path], field: REFUSED[path][field]})
    assert status == 400, answer
    assert answer["error"]["param"] == field
    assert field in answer["error"]["message"]
    assert len(backend.submitted) == before  # nothing ran


def test_unknown_fields_are_refused_nested_too(
    fake_server: tuple[FakeBackend, ServerThread],
) -> None:
    _, server = fake_server
    body = {"messages": [{"role": "user", "content": "w5", "name": "bob"}]}
    status, answer = post(server, CHAT, body)
    assert status == 400 and answer["error"]["param"] == "messages.0.name"
    # null is "not set", as the API treats it
    status, answer = post(server, COMPLETIONS, {**BASE[COMPLETIONS], "suffix": None})
    assert status == 200, answer
