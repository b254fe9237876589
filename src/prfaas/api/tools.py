"""Tool calling: ``tools`` reach the model's chat template, and its output becomes
``tool_calls``.

- A model whose chat template never mentions ``tools`` cannot be told about them: 400.
- ``tool_choice`` ``"required"`` and a named function are enforced through the grammar
  path: the output is JSON under a schema built from the tools' ``parameters`` (a list of
  ``{"name", "arguments"}`` calls, or the named function's arguments), so it always parses.
- ``"auto"`` (the default with tools) parses what the model chose to write: calls in the
  Hermes format that Qwen's and similar templates teach, ``<tool_call>{"name": ...,
  "arguments": {...}}</tool_call>``; text outside them is the message's content.
- ``"none"``: the tools are in the prompt, the output is plain content.
Streaming with tools is refused (a call is only known once its text is complete).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from prfaas.api.errors import APIError
from prfaas.api.protocol import ChatCompletionRequest, FunctionCall, ToolCall, ToolDef

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


@dataclass(frozen=True)
class ToolMode:
    choice: str  # "auto" | "required" | "named" | "none"
    name: str | None = None  # the named function


def prepare_tools(
    req: ChatCompletionRequest, tokenizer: Any
) -> tuple[ToolMode | None, dict[str, Any], dict[str, Any]]:
    """The request's tool mode, the chat template's extra arguments and the sampling
    spec's grammar fields (``json_schema``)."""
    tools, choice = req.tools or [], req.tool_choice
    if not tools:
        if choice is not None and choice != "none":
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        return None, {}, {}
    if "tools" not in str(getattr(tokenizer, "chat_template", None) or ""):
        raise APIError(400, "this model's chat template does not support tools", param="tools")
    if req.response_format is not None and req.response_format.type != "text":
        raise APIError(400, "tools and response_format do not mix", param="response_format")
    if req.stream:
        raise APIError(400, "streaming with tools is not supported", param="stream")
    template = {"tools": [t.model_dump(exclude_none=True) for t in tools]}
    by_name = {t.function.name: t for t in tools}
    if choice is None or isinstance(choice, str):
        mode = ToolMode(choice or "auto")
        if mode.choice != "required":
            return mode, template, {}
        calls = {"type": "array", "minItems": 1, "items": {"anyOf": [_call(t) for t in tools]}}
        return mode, template, {"json_schema": json.dumps(calls)}
    tool = by_name.get(choice.function.name)
    if tool is None:
        raise APIError(400, "tool_choice names no function in tools", param="tool_choice")
    schema = json.dumps(tool.function.parameters or {"type": "object"})
    return ToolMode("named", tool.function.name), template, {"json_schema": schema}


def _call(tool: ToolDef) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"const": tool.function.name},
            "arguments": tool.function.parameters or {"type": "object"},
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_calls(text: str, mode: ToolMode) -> tuple[str | None, list[ToolCall]]:
    """The message's content and its tool calls, from the generated text."""
    if mode.choice == "none":
        return text, []
    if mode.choice == "named":
        return None, [_tool_call(mode.name or "", text)]
    if mode.choice == "required":
        try:
            calls = json.loads(text)
        except ValueError:  # cut short by max_tokens: what there is, as content
            return text, []
        return None, [_tool_call(c["name"], json.dumps(c["arguments"])) for c in calls]
    found: list[ToolCall] = []
    for block in _HERMES.findall(text):
        try:
            call = json.loads(block)
            found.append(_tool_call(str(call["name"]), json.dumps(call.get("arguments", {}))))
        except (ValueError, KeyError, TypeError):
            return text, []  # not a well-formed call: the text as it is
    content = _HERMES.sub("", text).strip() if found else text
    return content or None, found


def _tool_call(name: str, arguments: str) -> ToolCall:
    return ToolCall(
        id=f"call_{uuid.uuid4().hex[:24]}", function=FunctionCall(name=name, arguments=arguments)
    )
