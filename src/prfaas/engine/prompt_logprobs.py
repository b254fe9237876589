"""Prompt logprobs, gathered from the prefill chunks of the requests that ask for them.

The hidden row at prompt position ``p`` predicts token ``p + 1``, so a chunk covering
``[start, end)`` fills entries ``start + 1 .. min(end, prompt_len - 1)``; entry 0 stays None
(nothing predicts the first token), as in vLLM. Such requests skip the prefix cache (their
whole prompt must be computed); a preempted one recomputes and overwrites the same entries.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prfaas.engine.logprobs import TokenLogprobs, prompt_token_logprobs
from prfaas.engine.request import Request
from prfaas.engine.runner import LayerHook, ModelRunner, Runner
from prfaas.engine.scheduler import SchedulerOutput

Entries = list[TokenLogprobs | None]


class PromptLogprobs:
    def __init__(self) -> None:
        self._requests: dict[str, Request] = {}
        self._entries: dict[str, Entries] = {}

    def add(self, req: Request) -> None:
        self._requests[req.request_id] = req
        self._entries[req.request_id] = [None] * req.num_prompt_tokens

    def execute(self, runner: Runner, out: SchedulerOutput, hook: LayerHook | None) -> torch.Tensor:
        """Run the step on ``runner`` (its logits), recording the prompt logprobs it yields."""
        keep = self.wanted(out)
        if not keep:
            return runner.execute(out) if hook is None else runner.execute(out, hook)
        # Only ModelRunner keeps hidden rows; the engine refuses such requests elsewhere.
        assert isinstance(runner, ModelRunner)
        logits, hidden = runner.execute_keeping(out, keep, hook)
        self.record(out, hidden, runner.compute_logits)
        return logits

    def wanted(self, out: SchedulerOutput) -> set[str]:
        """The step's chunks whose hidden rows predict prompt tokens we must record."""
        return {
            c.request_id
            for c in out.chunks
            if c.request_id in self._requests
            and c.start < self._requests[c.request_id].num_prompt_tokens - 1
        }

    def record(
        self,
        out: SchedulerOutput,
        hidden: dict[str, torch.Tensor],
        compute_logits: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """``hidden[request_id]``: (len(chunk.token_ids), hidden_size) rows of that chunk."""
        for chunk in out.chunks:
            if chunk.request_id not in hidden:
                continue
            req = self._requests[chunk.request_id]
            prompt = req.prompt_token_ids
            stop = min(chunk.start + len(chunk.token_ids), len(prompt) - 1)
            targets = prompt[chunk.start + 1 : stop + 1]
            rows = hidden[chunk.request_id][: len(targets)]
            num_top = req.params.prompt_logprobs or 0
            entries = prompt_token_logprobs(compute_logits, rows, targets, num_top)
            self._entries[chunk.request_id][chunk.start + 1 : stop + 1] = entries

    def replace(self, request_id: str, entries: Entries) -> None:
        """Entries computed elsewhere (with the KV), for a request that asked for them."""
        if request_id in self._entries:
            self._entries[request_id] = list(entries)

    def request_ids(self) -> set[str]:
        return set(self._requests)

    def take_with_first_token(self, req: Request) -> Entries | None:
        """The entries, once: when ``req`` has just got its first output token."""
        return self.take(req.request_id) if len(req.output_token_ids) == 1 else None

    def take(self, request_id: str) -> Entries | None:
        """The entries of a request whose prompt is done (None if it asked for none)."""
        self._requests.pop(request_id, None)
        return self._entries.pop(request_id, None)

    def drop(self, request_id: str) -> None:
        self.take(request_id)
