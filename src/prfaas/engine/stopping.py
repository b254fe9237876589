"""When a request stops: stop tokens, EOS, stop strings, max_tokens, the context limit."""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.engine.request import Request


@dataclass(frozen=True)
class StopDecision:
    finish_reason: str  # "stop" or "length"
    stop_reason: int | str | None
    # For a stop string: how many characters of the output text to keep.
    keep_chars: int | None = None


def check_stop(
    req: Request, text: str, new_chars: int, eos_token_ids: frozenset[int], max_model_len: int
) -> StopDecision | None:
    """Decide after ``req`` got a token; ``text`` is its whole detokenized output, of which
    the last ``new_chars`` characters are new."""
    p = req.params
    last = req.output_token_ids[-1]
    if len(req.output_token_ids) < p.min_tokens:
        # Short of min_tokens nothing stops it but the context limit (vLLM's rule).
        return StopDecision("length", None) if req.num_tokens >= max_model_len else None
    if last in p.stop_token_ids:
        return StopDecision("stop", last)
    if not p.ignore_eos and last in eos_token_ids:
        return StopDecision("stop", None)
    for s in p.stop:
        # Only a match that ends in the new characters is new.
        at = text.find(s, max(0, len(text) - new_chars - len(s) + 1))
        if at >= 0:
            keep = at + len(s) if p.include_stop_str_in_output else at
            return StopDecision("stop", s, keep_chars=keep)
    if len(req.output_token_ids) >= p.max_tokens or req.num_tokens >= max_model_len:
        return StopDecision("length", None)
    return None
