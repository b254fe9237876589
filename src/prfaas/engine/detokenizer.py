"""Incremental detokenization, so a caller can stream text as tokens arrive.

Decoding token by token breaks multi-byte characters and merged word pieces. We keep two
offsets into the output ids: text is emitted only once decoding ``ids[prefix:]`` grows past
the text of ``ids[prefix:read]`` without ending in a replacement character (an incomplete
UTF-8 sequence). The window stays short, so each step costs O(1) decodes.
"""

from __future__ import annotations

from typing import Any

_WINDOW = 6  # tokens of left context kept for merge-sensitive tokenizers


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        # Start with some prompt context so the first output token decodes as it would
        # mid-sentence (e.g. a leading space is kept).
        self.ids: list[int] = list(prompt_ids[-_WINDOW:])
        self.prefix = 0
        self.read = len(self.ids)
        self.text = ""

    def add(self, token_id: int) -> str:
        """Append one token; returns the newly completed text (possibly empty)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            delta = after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """Emit whatever is pending at the end of generation, even if incomplete."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        delta = after[len(before) :] if len(after) > len(before) else ""
        self.prefix = self.read = len(self.ids)
        self.text += delta
        return delta

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))
