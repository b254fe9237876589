"""From a validated OpenAI request to token ids and sampling parameters (or a 4xx)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError

from prfaas.api.errors import APIError
from prfaas.api.protocol import (
    MAX_LOGPROBS,
    MAX_N,
    MAX_PROMPTS,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ContentPart,
)
from prfaas.api.tools import ToolMode, prepare_tools
from prfaas.messages import SamplingSpec
from prfaas.seeds import derive_seed

M = TypeVar("M", bound=BaseModel)
GREEDY_BELOW = 1e-5  # temperatures below this are greedy (as in vLLM)


@dataclass(frozen=True)
class Prepared:
    """What a request asks for. ``prompts``: one or more (a batched completion); each runs
    ``n`` times, choice ``i * n + j`` being sequence ``j`` of prompt ``i``. ``echo``: the
    prompt's text (and its logprobs) precede each choice; ``echo_only``: ``max_tokens`` 0, the
    choice is the echoed prompt alone (one token is generated and dropped)."""

    prompts: list[list[int]]
    params: SamplingSpec
    stream: bool
    include_usage: bool
    n: int = 1
    echo: bool = False
    echo_only: bool = False
    tools: ToolMode | None = None  # chat with tools: how the output becomes tool calls


def sibling_params(params: SamplingSpec, index: int) -> SamplingSpec:
    """Sequence ``index`` of an ``n > 1`` request: a seeded request's siblings get seeds of
    their own, derived as the offline ``LLM`` derives them (so both give the same choices)."""
    if index == 0 or params.seed is None:
        return params
    return params.model_copy(update={"seed": derive_seed(params.seed, index)})


def parse_body(raw: bytes, model: type[M]) -> M:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, "the request body is not valid UTF-8") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc.msg}") from None
    except (ValueError, RecursionError):  # e.g. integers too long, nesting too deep
        raise APIError(400, "the request body is not JSON this server accepts") from None
    if not isinstance(obj, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or None
        raise APIError(400, f"{loc or 'body'}: {first['msg']}", param=loc) from None


def prepare_chat(req: ChatCompletionRequest, tokenizer: Any, max_model_len: int) -> Prepared:
    _refuse_undeclared(req)
    if req.store:
        raise APIError(400, "store: prfaas never stores completions", param="store")
    tools, template, grammar = prepare_tools(req, tokenizer)
    conversation = [_message(m) for m in req.messages]
    try:
        ids = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, **template
        )
        if hasattr(ids, "keys"):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
        prompt = [int(t) for t in ids]
    except Exception as exc:
        raise APIError(400, f"could not apply the chat template: {str(exc)[:300]}") from None
    max_tokens = (
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    )
    if req.top_logprobs is not None:
        if not req.logprobs:
            raise APIError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
        _check_range("top_logprobs", req.top_logprobs, 0, MAX_LOGPROBS)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    extra = {"logprobs": logprobs, **_structured(req), **grammar}
    prepared = _prepared(req, [prompt], max_tokens, max_model_len, "messages", extra)
    _check_token_ids(prepared.params, len(tokenizer))
    return dataclasses.replace(prepared, tools=tools)


def _message(m: ChatMessage) -> dict[str, Any]:
    """One message as chat templates take it (a call's arguments as a mapping)."""
    out: dict[str, Any] = {"role": m.role, "content": _text_of(m.content)}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.function.name,
                    "arguments": _arguments(c.function.arguments),
                },
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def prepare_completion(req: CompletionRequest, tokenizer: Any, max_model_len: int) -> Prepared:
    _refuse_undeclared(req)
    prompts = [_token_ids(p, tokenizer) for p in _prompts(req.prompt)]
    if req.logprobs is not None:
        _check_range("logprobs", req.logprobs, 0, MAX_LOGPROBS)
    extra: dict[str, Any] = {"logprobs": req.logprobs}
    max_tokens, echo_only = req.max_tokens, False
    if req.echo:
        if req.stream:
            raise APIError(400, "echo is not supported with stream", param="echo")
        if req.logprobs is not None:
            extra["prompt_logprobs"] = req.logprobs
        if max_tokens == 0:  # the prompt alone: generate one token and drop it
            max_tokens, echo_only = 1, True
    prepared = _prepared(req, prompts, max_tokens, max_model_len, "prompt", extra)
    _check_token_ids(prepared.params, len(tokenizer))
    return dataclasses.replace(prepared, echo=req.echo, echo_only=echo_only)


def _check_token_ids(params: SamplingSpec, vocab_size: int) -> None:
    """Refused here, not only by the engine (whose refusal on the cluster path would come
    after the stream started)."""
    if any(t >= vocab_size for t in params.logit_bias):
        raise APIError(
            400, f"logit_bias token ids must be in [0, {vocab_size})", param="logit_bias"
        )
    if any(t >= vocab_size for t in params.stop_token_ids):
        raise APIError(400, f"stop_token_ids must be in [0, {vocab_size})", param="stop_token_ids")


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """Text, token ids, or a batch of either (``["a", "b"]``, ``[[ids], [ids]]``)."""
    if isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
        return [cast("str | list[int]", prompt)]
    if len(prompt) > MAX_PROMPTS:
        raise APIError(400, f"at most {MAX_PROMPTS} prompts per request", param="prompt")
    return [p if isinstance(p, str) else list(p) for p in cast("list[str | list[int]]", prompt)]


def _token_ids(prompt: str | list[int], tokenizer: Any) -> list[int]:
    if isinstance(prompt, str):
        try:
            return [int(t) for t in tokenizer.encode(prompt)]
        except Exception:
            raise APIError(400, "the prompt could not be tokenized", param="prompt") from None
    # Checked here, not only by the engine: on the cluster path the engine that would
    # refuse them sits behind a stream that has already started.
    vocab_size = len(tokenizer)
    if any(not 0 <= t < vocab_size for t in prompt):
        raise APIError(400, f"prompt token ids must be in [0, {vocab_size})", param="prompt")
    return prompt


def _refuse_undeclared(req: ChatCompletionRequest | CompletionRequest) -> None:
    field = req.refused_field()
    if field is not None:
        raise APIError(400, f"`{field[:100]}` is not supported by this server", param=field)
    _check_range("n", req.n, 1, MAX_N)
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options needs stream: true", param="stream_options")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise APIError(400, f"{name} must be in [{low}, {high}], got {value}", param=name)


def _structured(req: ChatCompletionRequest) -> dict[str, Any]:
    """``response_format`` as the engine's grammar: any JSON object, or a JSON schema."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return {}
    if fmt.type == "json_object":
        return {"json_object": True}
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise APIError(
            400, "response_format json_schema needs json_schema.schema", param="response_format"
        )
    return {"json_schema": json.dumps(fmt.json_schema.schema_)}


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    """OpenAI sends token ids as JSON object keys (strings)."""
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        if not key.isdigit() or len(key) > 9:
            raise APIError(400, "logit_bias keys must be token ids", param="logit_bias")
        out[int(key)] = value
    return out


def _text_of(content: str | list[ContentPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise APIError(400, "only text content parts are supported", param="messages")
        texts.append(part.text)
    return "".join(texts)


def _prepared(
    req: ChatCompletionRequest | CompletionRequest,
    prompts: list[list[int]],
    max_tokens: int | None,
    max_model_len: int,
    what: str,
    extra: dict[str, Any],
) -> Prepared:
    n = max((len(p) for p in prompts), default=0)
    if not prompts or any(not p for p in prompts):
        raise APIError(400, "the prompt is empty", param=what)
    if n >= max_model_len:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {n} input tokens. Please reduce the length of the input {what}.",
            code="context_length_exceeded",
            param=what,
        )
    if max_tokens is None:
        max_tokens = max_model_len - n
    elif max_tokens < 1:
        raise APIError(400, f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
    elif n + max_tokens > max_model_len:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {n + max_tokens} tokens ({n} in the {what}, {max_tokens} in the "
            f"completion). Please reduce the length of the {what} or completion.",
            code="context_length_exceeded",
            param="max_tokens",
        )
    if req.min_tokens > max_tokens:
        raise APIError(400, "min_tokens must not exceed max_tokens", param="min_tokens")
    temperature = 1.0 if req.temperature is None else req.temperature
    if 0.0 <= temperature < GREEDY_BELOW:
        temperature = 0.0
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or ())
    try:
        params = SamplingSpec(
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=max(0, req.top_k or 0),
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=req.seed,
            stop=stop,
            stop_token_ids=list(req.stop_token_ids or ()),
            ignore_eos=req.ignore_eos,
            include_stop_str_in_output=req.include_stop_str_in_output,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            min_tokens=req.min_tokens,
            min_p=req.min_p or 0.0,
            logit_bias=_logit_bias(req.logit_bias),
            **extra,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else None
        param = _API_NAMES.get(name, name) if name else None
        raise APIError(400, f"{param or 'body'}: {first['msg']}"[:300], param=param) from None
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return Prepared(prompts, params, req.stream, include_usage, n=req.n)


# SamplingSpec fields whose API name differs.
_API_NAMES = {"json_schema": "response_format", "json_object": "response_format"}
