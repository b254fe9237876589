"""From a validated OpenAI request to token ids and sampling parameters (or a 4xx)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError

from prfaas.api.errors import APIError
from prfaas.api.protocol import ChatCompletionRequest, CompletionRequest, ContentPart
from prfaas.messages import SamplingSpec

M = TypeVar("M", bound=BaseModel)
GREEDY_BELOW = 1e-5  # temperatures below this are greedy (as in vLLM)


@dataclass(frozen=True)
class Prepared:
    prompt_token_ids: list[int]
    params: SamplingSpec
    stream: bool
    include_usage: bool


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


def check_model(requested: str | None, served: str) -> None:
    if requested is not None and requested != served:
        raise APIError(
            404,
            f"The model `{requested[:200]}` does not exist.",
            code="model_not_found",
            param="model",
        )


def prepare_chat(req: ChatCompletionRequest, tokenizer: Any, max_model_len: int) -> Prepared:
    _refuse_unsupported(req)
    if req.logprobs:
        raise APIError(400, "logprobs are not supported", param="logprobs")
    conversation = [{"role": m.role, "content": _text_of(m.content)} for m in req.messages]
    try:
        ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
        prompt = [int(t) for t in ids]
    except Exception as exc:
        raise APIError(400, f"could not apply the chat template: {str(exc)[:300]}") from None
    max_tokens = (
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    )
    return _prepared(req, prompt, max_tokens, max_model_len, "messages")


def prepare_completion(req: CompletionRequest, tokenizer: Any, max_model_len: int) -> Prepared:
    _refuse_unsupported(req)
    if req.echo or req.logprobs:
        raise APIError(400, "echo and logprobs are not supported", param="echo")
    prompt = _single_prompt(req.prompt)
    if isinstance(prompt, str):
        try:
            ids = [int(t) for t in tokenizer.encode(prompt)]
        except Exception:
            raise APIError(400, "the prompt could not be tokenized", param="prompt") from None
    else:
        ids = prompt
        # Checked here, not only by the engine: on the cluster path the engine that would
        # refuse them sits behind a stream that has already started.
        vocab_size = len(tokenizer)
        if any(not 0 <= t < vocab_size for t in ids):
            raise APIError(400, f"prompt token ids must be in [0, {vocab_size})", param="prompt")
    return _prepared(req, ids, req.max_tokens, max_model_len, "prompt")


def _single_prompt(prompt: str | list[str] | list[int] | list[list[int]]) -> str | list[int]:
    """Text or token ids; a batch of one (``["text"]``, ``[[ids]]``) is that one prompt."""
    if isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
        return cast("str | list[int]", prompt)
    if len(prompt) != 1:
        raise APIError(
            400, "one prompt per request (batched prompts are not supported)", param="prompt"
        )
    return list(prompt[0]) if isinstance(prompt[0], list) else prompt[0]


def _refuse_unsupported(req: ChatCompletionRequest | CompletionRequest) -> None:
    if req.n != 1:
        raise APIError(400, "n must be 1: prfaas returns one choice per request", param="n")
    if req.presence_penalty or req.frequency_penalty:
        raise APIError(
            400, "presence and frequency penalties are not supported", param="presence_penalty"
        )


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
    prompt: list[int],
    max_tokens: int | None,
    max_model_len: int,
    what: str,
) -> Prepared:
    if not prompt:
        raise APIError(400, "the prompt is empty", param=what)
    n = len(prompt)
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
        )
    except ValueError as exc:
        raise APIError(400, str(exc)[:300]) from None
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return Prepared(prompt, params, req.stream, include_usage)
