"""OpenAI API request and response bodies (pydantic at the HTTP edge).

Every field is honoured or refused: a field not declared here (``audio``, ``tools``,
``suffix``, ...) is a 400 naming it when its value is not null (``refused_field``), never
silently ignored. ``docs/api.md`` lists each field and what it does. Types are
strict: ``true`` is not an integer, ``"yes"`` not a boolean, ``"1"`` not a number (an int is
still a float). Bounds match the worker messages (``prfaas.messages.SamplingSpec``), so a
request the gateway accepts is one every worker accepts.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
MAX_STOP_TOKEN_IDS = 64  # vLLM extension; the worker messages' bound
MAX_LOGIT_BIAS = 300
MAX_LOGPROBS = 20  # alternatives per token (vLLM's default bound; OpenAI allows 20 in chat)
MAX_N = 16
MAX_PROMPTS = 64  # prompts in one batched completion request
MAX_TOOLS = 128


class _In(BaseModel):
    # Undeclared fields are kept (``model_extra``) so that the request can refuse them.
    model_config = ConfigDict(extra="allow", strict=True)

    def refused_field(self, prefix: str = "") -> str | None:
        """The first undeclared field with a value, here or in a nested part (dotted)."""
        for name, value in (self.model_extra or {}).items():
            if value is not None:
                return prefix + name
        for name in type(self).model_fields:
            value = getattr(self, name)
            for i, item in enumerate(value if isinstance(value, list) else [value]):
                if isinstance(item, _In):
                    at = f"{prefix}{name}.{i}." if isinstance(value, list) else f"{prefix}{name}."
                    found = item.refused_field(at)
                    if found is not None:
                        return found
        return None


class StreamOptions(_In):
    include_usage: bool = False


class _SamplingFields(_In):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vLLM extension
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = Field(default=None, max_length=MAX_STOP_TOKEN_IDS)
    ignore_eos: bool = False  # vLLM extension (benchmarks use it)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = Field(default=None, max_length=MAX_LOGIT_BIAS)
    user: str | None = Field(default=None, max_length=256)  # an end-user id; never stored
    # vLLM's sampling extensions
    repetition_penalty: float | None = None
    min_tokens: int = 0
    min_p: float | None = None
    include_stop_str_in_output: bool = False


class JsonSchemaFormat(_In):
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, object] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_In):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ContentPart(_In):
    type: str
    text: str | None = None


class FunctionDef(_In):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = Field(default=None, max_length=4096)
    parameters: dict[str, object] | None = None
    strict: bool | None = None  # the arguments always follow ``parameters`` when forced


class ToolDef(_In):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_In):
    name: str = Field(max_length=64)


class NamedToolChoice(_In):
    type: Literal["function"]
    function: NamedFunction


class FunctionCallIn(_In):
    name: str = Field(max_length=64)
    arguments: str


class ToolCallIn(_In):
    id: str = Field(max_length=128)
    type: Literal["function"]
    function: FunctionCallIn


class ChatMessage(_In):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(default=None, max_length=128)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    store: bool | None = None  # nothing is ever stored: only false is honoured
    tools: list[ToolDef] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None


# ---- responses -----------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] = Field(default_factory=list)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    """Per token: its text, where it starts in the choice's text, its logprob and the top
    alternatives (``None`` for an echoed prompt's first token, which has no context)."""

    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    """A whole completion, or one streamed chunk of it (same object, as in OpenAI's API)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "prfaas"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
