"""The offline API, shaped like vLLM's: ``LLM(model).generate(prompts, SamplingParams)``."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from prfaas.config import EngineConfig
from prfaas.engine.engine import Engine
from prfaas.engine.handoff import KvPayload
from prfaas.engine.outputs import CompletionOutput, RequestOutput
from prfaas.engine.request import Request
from prfaas.engine.sampling_params import SamplingParams

Prompt = str | list[int]
Params = SamplingParams | Sequence[SamplingParams] | None  # one for all, or one per prompt


class LLM:
    """An engine plus a tokenizer, run to completion for each batch of prompts.

    ``model=None`` is the embedded default (SmolLM2-135M-Instruct). Other keyword arguments
    are ``EngineConfig`` fields (``block_size``, ``max_num_batched_tokens``, ``dtype``, ...).
    """

    def __init__(
        self, model: str | None = None, *, show_progress: bool = False, **engine_args: Any
    ) -> None:
        config = EngineConfig(model=model, **engine_args)
        if show_progress:
            from rich.console import Console

            with Console(stderr=True).status("loading model…"):
                self.engine = Engine(config)
        else:
            self.engine = Engine(config)
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: Params = None,
        *,
        tenant_salt: bytes = b"",
    ) -> list[RequestOutput]:
        """Complete each prompt (text or token ids); outputs come back in prompt order.

        ``params`` is one ``SamplingParams`` for every prompt or a sequence of one per prompt.
        """
        batch = _as_batch(prompts)
        per_prompt = _params_per_item(params, len(batch), "prompts")
        reqs = [self._add(p, sp, tenant_salt) for p, sp in zip(batch, per_prompt, strict=True)]
        return self._run(reqs)

    def chat(
        self,
        messages: list[dict[str, str]] | list[list[dict[str, str]]],
        params: Params = None,
        *,
        tenant_salt: bytes = b"",
    ) -> list[RequestOutput]:
        """Format each conversation with the model's chat template, then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts: list[Prompt] = [self.apply_chat_template(c) for c in conversations]  # type: ignore[arg-type]
        return self.generate(prompts, params, tenant_salt=tenant_salt)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in newer releases
            ids = ids["input_ids"]
        return [int(t) for t in ids]

    # ---- KV hand-off: prefill here, decode elsewhere ---------------------------------------

    def prefill(
        self, prompt: Prompt, params: SamplingParams | None = None, *, tenant_salt: bytes = b""
    ) -> KvPayload:
        """Prefill one prompt only and export its KV (the prefill role's job)."""
        params = params or SamplingParams()
        ids = self._encode(prompt)
        req = self.engine.add_request(
            ids, params, str(next(self._ids)), prefill_only=True, tenant_salt=tenant_salt
        )
        while req.status.value != "sending_kv":
            if req.status.is_done:
                raise RuntimeError(f"request {req.request_id} ended before its KV was ready")
            self.engine.step()
        try:
            return self.engine.export_kv(req.request_id)
        finally:
            self.engine.release(req.request_id)

    def decode(
        self,
        payloads: Sequence[KvPayload],
        params: Params = None,
        *,
        tenant_salt: bytes = b"",
    ) -> list[RequestOutput]:
        """Decode from imported KV payloads (the decode role's job); ``params`` as in
        ``generate``, one per payload when a sequence."""
        per_payload = _params_per_item(params, len(payloads), "payloads")
        reqs = [
            self.engine.import_request(p, sp, str(next(self._ids)), tenant_salt=tenant_salt)
            for p, sp in zip(payloads, per_payload, strict=True)
        ]
        return self._run(reqs)

    # ---- internals -------------------------------------------------------------------------

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return [int(t) for t in self.tokenizer.encode(prompt)]
        return [int(t) for t in prompt]

    def _add(self, prompt: Prompt, params: SamplingParams, tenant_salt: bytes) -> Request:
        return self.engine.add_request(
            self._encode(prompt),
            params,
            str(next(self._ids)),
            tenant_salt=tenant_salt,
            prompt=prompt if isinstance(prompt, str) else None,
        )

    def _run(self, reqs: list[Request]) -> list[RequestOutput]:
        texts = {r.request_id: "" for r in reqs}
        # A request may already be finished at admission (imported KV whose first token stops).
        while self.engine.has_unfinished():
            for delta in self.engine.step():
                if delta.request_id in texts:
                    texts[delta.request_id] += delta.new_text
        return [
            RequestOutput(
                request_id=r.request_id,
                prompt=r.prompt,
                prompt_token_ids=r.prompt_token_ids,
                outputs=[
                    CompletionOutput(
                        0,
                        texts[r.request_id],
                        list(r.output_token_ids),
                        r.finish_reason,
                        r.stop_reason,
                    )
                ],
                finished=r.status.is_done,
                num_cached_tokens=r.num_cached_tokens,
            )
            for r in reqs
        ]


def _as_batch(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if prompts and isinstance(prompts[0], int):
        return [list(prompts)]  # type: ignore[arg-type]
    return list(prompts)  # type: ignore[arg-type]


def _params_per_item(params: Params, num_items: int, what: str) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * num_items
    if isinstance(params, SamplingParams):
        return [params] * num_items
    per_item = list(params)
    if len(per_item) != num_items:
        raise ValueError(
            f"got {len(per_item)} SamplingParams for {num_items} {what}; "
            f"pass one SamplingParams for all or exactly one per item"
        )
    for i, sp in enumerate(per_item):
        if not isinstance(sp, SamplingParams):
            raise TypeError(f"params[{i}] is {type(sp).__name__}, not SamplingParams")
    return per_item
