"""Tool calling with the official client: ``tool_choice`` required and named are enforced by
the grammar (the calls always parse and their arguments validate), a call round-trips
through the chat template, ``auto`` parses Hermes-format calls, and a model whose template
knows no tools gets a 400. The model is the tiny byte-level one (only the grammar makes its
output JSON) with a small tools-aware template, on both engines (vLLM: its own structured
outputs, through `prfaas serve --engine vllm`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from prfaas.api.tools import ToolMode, tool_calls
from tests.api.conftest import ENGINES, Served, byte_level_server
from tests.gateway.conftest import API_KEY, LocalServer

CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 8, "pattern": "^[a-z]+$"}
    },
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": CITY}},
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"utc": {"type": "boolean"}},
                "required": ["utc"],
                "additionalProperties": False,
            },
        },
    },
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module", params=ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> Iterator[Served]:
    yield from byte_level_server(request, tmp_path_factory, cache_dir)


def valid_city(arguments: str) -> bool:
    args = json.loads(arguments)
    return set(args) == {"city"} and 1 <= len(args["city"]) <= 8 and args["city"].isalpha()


def test_a_named_function_is_always_called(client: openai.OpenAI) -> None:
    for seed in range(5):
        out = client.chat.completions.create(
            model="bytes",
            messages=ASK,  # type: ignore[arg-type]
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=60,
            temperature=1.0,
            seed=seed,
        )
        message = out.choices[0].message
        assert out.choices[0].finish_reason == "tool_calls", message
        assert message.content is None and message.tool_calls is not None
        (call,) = message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather"
        assert valid_city(call.function.arguments)


def test_required_calls_name_the_given_tools(client: openai.OpenAI) -> None:
    for seed in range(4):
        out = client.chat.completions.create(
            model="bytes",
            messages=ASK,  # type: ignore[arg-type]
            tools=TOOLS,
            tool_choice="required",
            max_tokens=120,
            temperature=1.0,
            seed=seed,
        )
        calls = out.choices[0].message.tool_calls
        if out.choices[0].finish_reason == "length":
            continue  # a list of calls may run past max_tokens; the grammar still held
        assert calls, out.choices[0].message
        for call in calls:
            assert call.function.name in ("get_weather", "get_time")
            if call.function.name == "get_weather":
                assert valid_city(call.function.arguments)
            else:
                assert isinstance(json.loads(call.function.arguments)["utc"], bool)


def test_a_call_round_trips_through_the_template(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="bytes",
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
        seed=1,
    )
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    messages: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    out = client.chat.completions.create(
        model="bytes", messages=messages, tools=TOOLS, tool_choice="none", max_tokens=5, seed=1
    )
    assert out.choices[0].message.content is not None
    assert out.usage is not None and out.usage.prompt_tokens > (first.usage.prompt_tokens or 0)  # type: ignore[union-attr]


def test_tools_with_stream_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="bytes", messages=ASK, tools=TOOLS, stream=True)  # type: ignore[arg-type]
    assert info.value.body["param"] == "stream"  # type: ignore[index]


def test_a_model_without_a_tool_template_refuses_tools(local_server: LocalServer) -> None:
    c = openai.OpenAI(base_url=f"{local_server.base_url}/v1", api_key=API_KEY, max_retries=0)
    with c, pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS)  # type: ignore[arg-type]
    assert info.value.body["param"] == "tools"  # type: ignore[index]


def test_auto_parses_hermes_calls() -> None:
    call = '{"name": "get_weather", "arguments": {"city": "paris"}}'
    text = f"Let me look. <tool_call>{call}</tool_call>"
    content, calls = tool_calls(text, ToolMode("auto"))
    assert content == "Let me look."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "paris"})
    ]
    assert tool_calls("just text", ToolMode("auto")) == ("just text", [])
    broken = "<tool_call>{not json}</tool_call>"
    assert tool_calls(broken, ToolMode("auto")) == (broken, [])
