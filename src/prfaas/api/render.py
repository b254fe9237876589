"""From what a generation produced (token events) to the OpenAI choices, logprobs included,
in the shapes vLLM's server returns them.

Chat logprobs: per token its text, logprob, UTF-8 bytes and the ``top_logprobs`` most likely
alternatives. Completion logprobs: parallel lists (``tokens``, ``token_logprobs``,
``top_logprobs`` as text → logprob, the chosen token included, and ``text_offset``); with
``echo`` the prompt's tokens come first, the very first with ``None`` (nothing predicts it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prfaas.api.prepare import Prepared
from prfaas.api.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    ToolCall,
    TopLogprob,
)
from prfaas.api.tools import tool_calls
from prfaas.messages import LogprobEntry, TokenEvent


@dataclass
class Output:
    """One choice's events, gathered."""

    text: str = ""
    finish_reason: str | None = None
    num_tokens: int = 0
    logprobs: list[LogprobEntry] = field(default_factory=list)
    prompt_logprobs: list[LogprobEntry | None] | None = None

    def add(self, event: TokenEvent) -> None:
        self.text += event.text
        self.num_tokens += len(event.token_ids)
        self.logprobs.extend(event.logprobs or ())
        if event.prompt_logprobs is not None:
            self.prompt_logprobs = list(event.prompt_logprobs)
        if event.finished:
            self.finish_reason = event.finish_reason


class Renderer:
    """Turns one request's outputs into choices; ``decode`` gives a token's text."""

    def __init__(self, prepared: Prepared, tokenizer: Any) -> None:
        self.prepared = prepared
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    @property
    def wants_logprobs(self) -> bool:
        return self.prepared.params.logprobs is not None

    def token_text(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = str(self._tokenizer.decode([token_id]))
        return text

    # ---- chat ------------------------------------------------------------------------------

    def chat_choice(self, index: int, out: Output) -> ChatChoice:
        content: str | None = out.text
        calls: list[ToolCall] = []
        finish = out.finish_reason
        if self.prepared.tools is not None:
            content, calls = tool_calls(out.text, self.prepared.tools)
            if calls and finish == "stop":
                finish = "tool_calls"
        return ChatChoice(
            index=index,
            message=AssistantMessage(content=content, tool_calls=calls),
            finish_reason=finish,
            logprobs=self.chat_logprobs(out.logprobs),
        )

    def chat_logprobs(self, entries: Sequence[LogprobEntry] | None) -> ChatLogprobs | None:
        if not self.wants_logprobs:
            return None
        return ChatLogprobs(content=[self._chat_entry(e) for e in entries or ()])

    def _chat_entry(self, e: LogprobEntry) -> ChatTokenLogprob:
        top = [self._top(t, lp) for t, lp in zip(e.top_token_ids, e.top_logprobs, strict=True)]
        text = self.token_text(e.token_id)
        return ChatTokenLogprob(
            token=text, logprob=e.logprob, bytes=list(text.encode()), top_logprobs=top
        )

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        text = self.token_text(token_id)
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))

    # ---- completions -----------------------------------------------------------------------

    def completion_choice(self, index: int, out: Output, prompt: list[int]) -> CompletionChoice:
        text, ids = out.text, [e.token_id for e in out.logprobs]
        entries: list[LogprobEntry | None] = list(out.logprobs)
        if self.prepared.echo_only:
            text, ids, entries = "", [], []
        if self.prepared.echo:
            text = str(self._tokenizer.decode(prompt)) + text
            ids = list(prompt) + ids
            entries = list(out.prompt_logprobs or [None] * len(prompt)) + entries
        logprobs = self._completion_logprobs(entries, ids, 0) if self.wants_logprobs else None
        return CompletionChoice(
            index=index, text=text, finish_reason=out.finish_reason, logprobs=logprobs
        )

    def completion_logprobs(
        self, entries: Sequence[LogprobEntry] | None, offset: int
    ) -> CompletionLogprobs | None:
        """Logprobs of generated tokens whose text starts at ``offset`` in the choice."""
        if not self.wants_logprobs:
            return None
        entries = list(entries or ())
        return self._completion_logprobs(entries, [e.token_id for e in entries], offset)

    def _completion_logprobs(
        self, entries: Sequence[LogprobEntry | None], token_ids: list[int], offset: int
    ) -> CompletionLogprobs:
        out = CompletionLogprobs(text_offset=[], token_logprobs=[], tokens=[], top_logprobs=[])
        for token_id, e in zip(token_ids, entries, strict=True):
            text = self.token_text(token_id)
            out.tokens.append(text)
            out.text_offset.append(offset)
            offset += len(text)
            if e is None:
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
                continue
            out.token_logprobs.append(e.logprob)
            top = {
                self.token_text(t): lp
                for t, lp in zip(e.top_token_ids, e.top_logprobs, strict=True)
            }
            top.setdefault(text, e.logprob)
            out.top_logprobs.append(top)
        return out
