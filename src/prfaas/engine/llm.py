"""The offline API, shaped like vLLM's: ``LLM(model).generate(prompts, SamplingParams)``."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prfaas.config import EngineConfig
from prfaas.engine.engine import Engine
from prfaas.engine.handoff import KvPayload
from prfaas.engine.logprobs import TokenLogprobs, as_vllm_dict, decoder
from prfaas.engine.outputs import CompletionOutput, RequestOutput, TokenDelta
from prfaas.engine.request import Request
from prfaas.engine.sampling_params import SamplingParams
from prfaas.seeds import derive_seed

Prompt = str | list[int]
Params = SamplingParams | Sequence[SamplingParams] | None  # one for all, or one per prompt


@dataclass
class _Sequence:
    request: Request
    text: str = ""
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None


@dataclass
class _Group:
    """The ``n`` sequences of one prompt. The first is admitted alone; the others once it
    has prefilled, so they find the prompt's full blocks in the prefix cache and share them."""

    request_id: str
    params: SamplingParams
    seqs: list[_Sequence]
    tenant_salt: bytes = b""
    num_admitted: int = 1

    def sibling_params(self, index: int) -> SamplingParams:
        seed = None if self.params.seed is None else derive_seed(self.params.seed, index)
        return dataclasses.replace(self.params, n=1, seed=seed, prompt_logprobs=None)


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
        groups = [self._add(p, sp, tenant_salt) for p, sp in zip(batch, per_prompt, strict=True)]
        return self._run(groups)

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
        if any(sp.n != 1 for sp in per_payload):
            raise ValueError("decode() takes one sequence per payload (n=1)")
        groups = []
        for p, sp in zip(payloads, per_payload, strict=True):
            rid = str(next(self._ids))
            req = self.engine.import_request(p, sp, rid, tenant_salt=tenant_salt)
            groups.append(_Group(rid, sp, [_Sequence(req)], tenant_salt))
        return self._run(groups)

    # ---- internals -------------------------------------------------------------------------

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return [int(t) for t in self.tokenizer.encode(prompt)]
        return [int(t) for t in prompt]

    def _add(self, prompt: Prompt, params: SamplingParams, tenant_salt: bytes) -> _Group:
        rid = str(next(self._ids))
        first = params if params.n == 1 else dataclasses.replace(params, n=1)
        group = _Group(rid, params, [], tenant_salt)
        group.seqs.append(_Sequence(self._admit(group, 0, prompt, first)))
        return group

    def _admit(self, group: _Group, index: int, prompt: Prompt, params: SamplingParams) -> Request:
        rid = group.request_id if group.params.n == 1 else f"{index}_{group.request_id}"
        text = prompt if isinstance(prompt, str) else None
        return self.engine.add_request(
            self._encode(prompt), params, rid, tenant_salt=group.tenant_salt, prompt=text
        )

    def _admit_siblings(self, group: _Group) -> None:
        first = group.seqs[0].request
        if group.num_admitted == group.params.n or not (
            first.output_token_ids or first.status.is_done
        ):
            return
        for index in range(1, group.params.n):
            params = group.sibling_params(index)
            prompt = first.prompt if first.prompt is not None else first.prompt_token_ids
            req = self._admit(group, index, prompt, params)
            group.seqs.append(_Sequence(req))
        group.num_admitted = group.params.n

    def _run(self, groups: list[_Group]) -> list[RequestOutput]:
        seqs = {s.request.request_id: s for g in groups for s in g.seqs}
        # A request may already be finished at admission (imported KV whose first token stops).
        while self.engine.has_unfinished() or any(g.num_admitted < g.params.n for g in groups):
            for g in groups:
                if g.num_admitted < g.params.n:
                    self._admit_siblings(g)
                    seqs.update((s.request.request_id, s) for s in g.seqs)
            for delta in self.engine.step():
                if delta.request_id in seqs:
                    _take(seqs[delta.request_id], delta)
        return [self._output(g) for g in groups]

    def _output(self, group: _Group) -> RequestOutput:
        decode = decoder(self.tokenizer)
        first = group.seqs[0]
        prompt_logprobs = None
        if first.prompt_logprobs is not None:
            prompt_logprobs = [
                None if e is None else as_vllm_dict(e, decode) for e in first.prompt_logprobs
            ]
        outputs = [
            CompletionOutput(
                i,
                s.text,
                list(s.request.output_token_ids),
                s.request.finish_reason,
                s.request.stop_reason,
                None
                if s.request.params.logprobs is None
                else [as_vllm_dict(e, decode) for e in s.logprobs],
            )
            for i, s in enumerate(group.seqs)
        ]
        return RequestOutput(
            request_id=group.request_id,
            prompt=first.request.prompt,
            prompt_token_ids=first.request.prompt_token_ids,
            outputs=outputs,
            finished=all(s.request.status.is_done for s in group.seqs),
            num_cached_tokens=first.request.num_cached_tokens,
            prompt_logprobs=prompt_logprobs,
        )


def _take(seq: _Sequence, delta: TokenDelta) -> None:
    seq.text += delta.new_text
    if delta.logprobs:
        seq.logprobs.extend(delta.logprobs)
    if delta.prompt_logprobs is not None:
        seq.prompt_logprobs = delta.prompt_logprobs


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
