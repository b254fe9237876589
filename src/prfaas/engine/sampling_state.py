"""The engine's per-request sampling companions: grammars and prompt-logprob collection.

The scheduler never sees these; the engine calls ``add`` on admission (it may refuse),
``execute`` and ``sample`` in each step, ``on_token`` for every token a request gets (sampled
here or imported with its KV) and ``drop`` when a request ends.
"""

from __future__ import annotations

from typing import Any

import torch

from prfaas.engine.grammar import Grammar, GrammarCompiler, allowed_tokens
from prfaas.engine.prompt_logprobs import Entries, PromptLogprobs
from prfaas.engine.request import Request
from prfaas.engine.runner import LayerHook, Runner
from prfaas.engine.sampler import SamplerOutput, sample
from prfaas.engine.scheduler import SchedulerOutput


class SamplingState:
    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: frozenset[int]) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self._compiler = GrammarCompiler(tokenizer, vocab_size)
        self._grammars: dict[str, Grammar] = {}
        self._prompt_logprobs = PromptLogprobs()

    def add(self, req: Request) -> None:
        """Raises ValueError (nothing kept) for a grammar that cannot be enforced."""
        structured = req.params.structured_outputs
        if structured is not None:
            self._grammars[req.request_id] = self._compiler.compile(structured)
        if req.params.prompt_logprobs is not None:
            self._prompt_logprobs.add(req)

    def execute(self, runner: Runner, out: SchedulerOutput, hook: LayerHook | None) -> torch.Tensor:
        return self._prompt_logprobs.execute(runner, out, hook)

    def sample(self, logits: torch.Tensor, rows: list[Request]) -> SamplerOutput:
        grammars = [self._grammars.get(r.request_id) for r in rows]
        allowed = allowed_tokens(grammars, logits.shape[-1], logits.device)
        return sample(logits, rows, self.eos_token_ids, allowed)

    def on_token(self, req: Request) -> Entries | None:
        """Advance the request's grammar by its newest token; with the first token, hand
        over the prompt logprobs."""
        grammar = self._grammars.get(req.request_id)
        if grammar is not None:
            grammar.accept(req.output_token_ids[-1])
        return self._prompt_logprobs.take_with_first_token(req)

    def land(self, req: Request, prompt_logprobs: Entries | None) -> None:
        """A request whose prompt was computed elsewhere: its prompt logprobs came with the KV
        (None: they stay unknown)."""
        if prompt_logprobs is not None and len(prompt_logprobs) == req.num_prompt_tokens:
            self._prompt_logprobs.replace(req.request_id, prompt_logprobs)

    def on_resumed(self, req: Request) -> None:
        """Advance the request's grammar over outputs another instance produced (failover)."""
        grammar = self._grammars.get(req.request_id)
        if grammar is not None:
            for token_id in req.output_token_ids:
                grammar.accept(token_id)

    def check_integrity(self, live: set[str]) -> None:
        """Nothing kept for a request that has ended."""
        kept = set(self._grammars) | self._prompt_logprobs.request_ids()
        if not kept <= live:
            raise AssertionError(f"sampling state of ended requests: {sorted(kept - live)}")

    def drop(self, request_id: str) -> None:
        self._grammars.pop(request_id, None)
        self._prompt_logprobs.drop(request_id)
