"""Structured outputs: a JSON schema (or any JSON object) applied as a per-row token mask.

Grammars are compiled by llguidance (a Rust library; CPU; no further Python dependencies)
against the model's tokenizer. A grammar advances by one accepted token at a time; its mask
is the set of tokens that keep the output a prefix of some string of the language, and once
the output is complete only EOS is allowed. JSON is compiled without free whitespace, so
every output is as short as the schema allows.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from prfaas.engine.sampling_params import StructuredOutputs

logger = logging.getLogger(__name__)

_JSON_OPTIONS = {"whitespace_flexible": False}


class Grammar:
    """One request's grammar state (an llguidance matcher)."""

    def __init__(self, matcher: Any) -> None:
        self._matcher = matcher

    def accept(self, token_id: int) -> bool:
        """Advance by the token the request got; False (and EOS only from then on) when the
        grammar does not allow it, e.g. a first token sampled without the grammar."""
        ok = bool(self._matcher.consume_token(token_id))
        if not ok:
            logger.warning("token %d breaks the grammar: %s", token_id, self._matcher.get_error())
        return ok

    def fill(self, bitmask: np.ndarray, row: int) -> None:
        """Write the allowed-token bits of the next token into ``bitmask[row]``."""
        v = bitmask[row]
        self._matcher.unsafe_compute_mask_ptr(v.ctypes.data, v.size * v.itemsize)

    @property
    def is_done(self) -> bool:
        return bool(self._matcher.is_stopped())


class GrammarCompiler:
    """Compiles ``StructuredOutputs`` for one tokenizer (its llguidance view built once)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._ll_tokenizer: Any = None

    def compile(self, spec: StructuredOutputs) -> Grammar:
        """Raises ValueError for a schema llguidance refuses or a tokenizer it cannot use."""
        llguidance = _import_llguidance()
        schema: str = spec.json if spec.json is not None else '{"type": "object"}'
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_OPTIONS)
        tokenizer = self._tokenizer_view(llguidance)
        error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        if error:
            raise ValueError(f"the JSON schema cannot be enforced: {error}")
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"the JSON schema cannot be enforced: {matcher.get_error()}")
        return Grammar(matcher)

    def _tokenizer_view(self, llguidance: Any) -> Any:
        if self._ll_tokenizer is None:
            import llguidance.hf

            try:
                self._ll_tokenizer = llguidance.hf.from_tokenizer(
                    self._tokenizer, n_vocab=self.vocab_size
                )
            except (ValueError, TypeError) as e:
                raise ValueError(f"structured outputs need a fast tokenizer: {e}") from None
        return self._ll_tokenizer


def allowed_tokens(
    grammars: list[Grammar | None], vocab_size: int, device: torch.device
) -> torch.Tensor | None:
    """(N, vocab) bool: True where row i's grammar allows the token (every token for a row
    without one); None when no row has a grammar."""
    if all(g is None for g in grammars):
        return None
    words = (vocab_size + 31) // 32
    bitmask = np.full((len(grammars), words), -1, dtype=np.int32)
    for row, grammar in enumerate(grammars):
        if grammar is not None:
            grammar.fill(bitmask, row)
    bits = torch.from_numpy(bitmask).to(device)
    shifts = torch.arange(32, dtype=torch.int32, device=device)
    # Bit j of word w is token 32 * w + j.
    unpacked = (bits[:, :, None] >> shifts) & 1  # (N, words, 32)
    return unpacked.reshape(len(grammars), words * 32)[:, :vocab_size].bool()


def _import_llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise ValueError("structured outputs need the llguidance package") from None
    return llguidance
