"""One inference instance: admit requests, step the batch, hand KV off and take it in.

``step()`` is the whole main loop: the scheduler picks the step's chunks, the runner computes
them, sampled tokens are appended, detokenized and checked for stopping.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Protocol

import torch

from prfaas.config import EngineConfig
from prfaas.engine.detokenizer import IncrementalDetokenizer
from prfaas.engine.handoff import KvImportError, KvPayload, layout_from_specs
from prfaas.engine.host_memory import placement
from prfaas.engine.kv_setup import build_kv_cache
from prfaas.engine.landing import export_payload, land_payload
from prfaas.engine.layer_export import LayerExport, Sink, host_copy_for
from prfaas.engine.logprobs import TokenLogprobs
from prfaas.engine.outputs import TokenDelta
from prfaas.engine.request import Request, RequestStatus
from prfaas.engine.resume import check_resumable, resume_outputs
from prfaas.engine.runner import LayerReader, ModelRunner, NamedTensors
from prfaas.engine.sampling_params import SamplingParams, check_for_model
from prfaas.engine.sampling_state import SamplingState
from prfaas.engine.scheduler import Scheduler, SchedulerOutput
from prfaas.engine.stopping import check_stop
from prfaas.kvcache.hashing import root_hash
from prfaas.kvcache.hybrid import HybridKVCacheManager, StateCacheConfig
from prfaas.kvcache.manager import cdiv
from prfaas.kvcache.spec import specs_from_hf_config
from prfaas.model.loader import LoadedModel, load_model

logger = logging.getLogger(__name__)


class LayerSink(Protocol):
    """Takes a prefill-only request's KV layer by layer as the engine computes it.

    Called on the engine thread, in the middle of a step: it must copy what it keeps and
    return at once (no network, no waiting). ``begin`` comes once, just before the step
    that runs the prompt's last chunk; then ``layer(i, tensors)`` once per model layer, in
    order, each with that layer's final payload tensors (``KvPayload.named_tensors`` names).
    """

    def begin(self) -> None: ...
    def layer(self, layer_index: int, tensors: NamedTensors) -> None: ...


@dataclass
class _Live:
    """Engine-side companions of a request (torch and tokenizer state the scheduler never sees)."""

    request: Request
    detok: IncrementalDetokenizer


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        loaded: LoadedModel | None = None,
        state_config: StateCacheConfig | None = None,
    ) -> None:
        """``state_config`` sizes linear-attention state snapshots (hybrid models only)."""
        self.config = config
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self.device, dtype = placement(config.device, config.dtype)
        self.loaded = loaded or load_model(
            config.model, self.device, dtype, config.resolved_cache_dir, config.max_model_len
        )
        hf = self.loaded.hf_config
        self.tokenizer = self.loaded.tokenizer
        self.fingerprint = self.loaded.fingerprint
        self.max_model_len = self.loaded.max_model_len
        self.vocab_size = int(hf.vocab_size)
        self.dtype = next(self.loaded.model.parameters()).dtype
        # The same accounting the planner uses to predict S_kv from a config.
        self.layer_specs = specs_from_hf_config(hf.to_dict(), kv_dtype_bytes=self.dtype.itemsize)
        self.layout = layout_from_specs(self.layer_specs)
        self.kv, self.runner = build_kv_cache(
            config,
            self.layer_specs,
            self.layout,
            self.loaded.model,
            self.dtype,
            self.device,
            state_config or StateCacheConfig(),
        )
        self.scheduler = Scheduler(self.kv, config.max_num_batched_tokens, config.max_num_seqs)
        # A prefix hit here also needs a linear-state snapshot at its end (the kv index is
        # told, and reports only such hits; the cache events name the snapshots).
        self.hybrid = isinstance(self.kv, HybridKVCacheManager)
        eos = getattr(hf, "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(int(self.tokenizer.eos_token_id))
        self.eos_token_ids = frozenset(int(e) for e in eos_ids)
        self._live: dict[str, _Live] = {}
        self._layer_sinks: dict[str, LayerSink] = {}  # prefill-only requests streamed per layer
        self._pending: list[TokenDelta] = []
        self._sampling = SamplingState(self.tokenizer, self.vocab_size, self.eos_token_ids)
        logger.info(
            "engine ready: %d KV blocks of %d tokens on %s (%s)",
            self.kv.pool.num_blocks,
            config.block_size,
            self.device,
            self.dtype,
        )

    # ---- admission -------------------------------------------------------------------------

    def add_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        *,
        prefill_only: bool = False,
        tenant_salt: bytes = b"",
        prompt: str | None = None,
        resumed: list[int] | tuple[()] = (),  # outputs streamed elsewhere (engine/resume.py)
    ) -> Request:
        """Queue a request. Raises ValueError (nothing queued) for input this engine can't serve."""
        check_resumable(params, resumed, self.vocab_size)
        req = self._new_request(
            prompt_token_ids, params, request_id, prefill_only, tenant_salt, prompt
        )
        resume_outputs(req, self._live[req.request_id].detok, self._sampling, resumed)
        self.scheduler.add(req)
        return req

    def reserve_for_kv(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        *,
        tenant_salt: bytes = b"",
        prompt: str | None = None,
    ) -> Request:
        """Hold blocks for a request whose prompt KV will arrive (``land_kv``) or fail
        (``fail_kv``). Raises KvImportError when the pool cannot hold it now."""
        req = self._new_request(prompt_token_ids, params, request_id, False, tenant_salt, prompt)
        req.status = RequestStatus.WAITING_FOR_KV
        if not self.scheduler.park(req, req.num_prompt_tokens):
            del self._live[req.request_id]
            self._sampling.drop(req.request_id)
            raise KvImportError("no free KV blocks for the incoming payload")
        return req

    def land_kv(self, request_id: str, payload: KvPayload) -> None:
        """Write a payload into a reserved request's blocks; it then decodes. On a payload that
        does not fit, raise KvImportError and leave the request waiting for KV."""
        req = self.scheduler.parked[request_id]
        payload.validate(self.fingerprint, self.layout, self.dtype, self.vocab_size)
        if land_payload(req, payload, self.kv, self.runner, self.scheduler):
            self._sampling.land(req, payload.prompt_logprobs)  # computed where the prompt was
            self._pending.append(self._after_token(req, payload.first_logprobs))  # next step()

    def fail_kv(self, request_id: str) -> None:
        """The KV will not come: prefill this request locally instead (the fallback)."""
        req = self.scheduler.parked[request_id]
        req.move_to(RequestStatus.WAITING)
        self.scheduler.unpark_waiting(req)

    def import_request(
        self,
        payload: KvPayload,
        params: SamplingParams,
        request_id: str | None = None,
        *,
        tenant_salt: bytes = b"",
    ) -> Request:
        """Admit a request together with its prompt's KV; nothing is kept if it is refused."""
        payload.validate(self.fingerprint, self.layout, self.dtype, self.vocab_size)
        req = self.reserve_for_kv(payload.token_ids, params, request_id, tenant_salt=tenant_salt)
        try:
            self.land_kv(req.request_id, payload)
        except Exception:
            self.abort(req.request_id)
            raise
        return req

    def import_prefix(self, payload: KvPayload, *, tenant_salt: bytes = b"") -> int:
        """Land a payload as prefix cache only (a cross-cluster cache pull): its full blocks
        are registered under their salted hashes and the request ends at once, leaving them
        cached and evictable. Returns the tokens now cached; nothing is kept on an error."""
        req = self.import_request(
            payload, SamplingParams(max_tokens=1, ignore_eos=True), tenant_salt=tenant_salt
        )
        # Nobody streams this request: drop the first token's delta land_kv queued.
        self._pending = [d for d in self._pending if d.request_id != req.request_id]
        if req.request_id in self._live:
            self._end(req.request_id, RequestStatus.FINISHED)
        return payload.num_tokens // self.kv.block_size * self.kv.block_size

    # ---- the main loop ---------------------------------------------------------------------

    def step(self) -> list[TokenDelta]:
        deltas, self._pending = self._pending, []
        out = self.scheduler.schedule()
        if not out.chunks:
            return deltas
        export = self._layer_export(out) if self._layer_sinks else None
        logits = self._sampling.execute(self.runner, out, export)
        if export is not None:
            export.finish()  # every streamed layer is in host memory and handed over
        to_sample = [self._live[c.request_id].request for c in out.chunks if c.sample]
        result = self._sampling.sample(logits, to_sample)
        ids = [r.request_id for r in to_sample]
        sampled = dict(zip(ids, result.token_ids, strict=True))
        logprobs = dict(zip(ids, result.logprobs, strict=True))
        updated = self.scheduler.update(out, sampled)
        deltas.extend(self._after_token(r, logprobs[r.request_id]) for r in updated)
        return deltas

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0 or bool(self._pending)

    # ---- hand-off and lifecycle ------------------------------------------------------------

    def export_kv(self, request_id: str) -> KvPayload:
        """The KV of a prefill-only request that finished its prefill (SENDING_KV)."""
        req = self.scheduler.parked.get(request_id)
        if req is None or req.status is not RequestStatus.SENDING_KV:
            raise KeyError(f"request {request_id} has no KV ready to export")
        return export_payload(req, self.kv, self.runner, self.fingerprint, self.dtype, self.layout)

    def stream_layers(self, request_id: str, sink: LayerSink) -> None:
        """Hand a queued prefill-only request's KV to ``sink`` layer by layer, during the step
        that completes its prompt (``LayerSink``); ``export_first_token`` then gives the rest."""
        live = self._live.get(request_id)
        if live is None or not live.request.prefill_only:
            raise KeyError(f"request {request_id} is not a live prefill-only request")
        if live.request.num_computed_tokens > 0:
            raise ValueError(f"request {request_id} has started its prefill")
        self._layer_sinks[request_id] = sink

    def export_first_token(self, request_id: str) -> int:
        """The first token of a prefill-only request that finished its prefill (SENDING_KV)."""
        req = self.scheduler.parked.get(request_id)
        if req is None or req.status is not RequestStatus.SENDING_KV:
            raise KeyError(f"request {request_id} has no first token to export")
        return req.output_token_ids[0]

    def release(self, request_id: str) -> None:
        """The exported KV was acknowledged (or its lease expired): free the blocks."""
        self._end(request_id, RequestStatus.FINISHED)

    def abort(self, request_id: str) -> None:
        if request_id in self._live:
            self._end(request_id, RequestStatus.ABORTED)

    def check_integrity(self) -> None:
        self.kv.check_integrity()
        held = {r.request_id for r in self.scheduler.requests()}
        if held != set(self._live):
            raise AssertionError(f"engine tracks {sorted(self._live)}, scheduler {sorted(held)}")
        if not set(self._layer_sinks) <= held:
            raise AssertionError(f"layer sinks of ended requests: {sorted(self._layer_sinks)}")
        self._sampling.check_integrity(held)

    # ---- internals -------------------------------------------------------------------------

    def _new_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str | None,
        prefill_only: bool,
        tenant_salt: bytes,
        prompt: str | None,
    ) -> Request:
        request_id = request_id or uuid.uuid4().hex
        if request_id in self._live:
            raise ValueError(f"request id {request_id!r} is already in use")
        if not prompt_token_ids:
            raise ValueError("the prompt is empty")
        if any(not 0 <= t < self.vocab_size for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")
        check_for_model(params, self.vocab_size, isinstance(self.runner, ModelRunner))
        total = len(prompt_token_ids) + (1 if prefill_only else params.max_tokens)
        if total > self.max_model_len:
            raise ValueError(
                f"this model's maximum context length is {self.max_model_len} tokens; the "
                f"request needs {total} ({len(prompt_token_ids)} prompt + "
                f"{total - len(prompt_token_ids)} output)"
            )
        if cdiv(total, self.kv.block_size) > self.kv.pool.num_blocks:
            raise ValueError(
                f"the request needs {total} tokens of KV; the pool holds "
                f"{self.kv.pool.num_blocks * self.kv.block_size}"
            )
        req = Request(
            request_id=request_id,
            prompt_token_ids=list(prompt_token_ids),
            params=params,
            root_hash=root_hash(self.fingerprint, tenant_salt),
            block_size=self.kv.block_size,
            prefill_only=prefill_only,
            prompt=prompt,
        )
        self._sampling.add(req)
        self._live[request_id] = _Live(
            req, IncrementalDetokenizer(self.tokenizer, req.prompt_token_ids)
        )
        return req

    def _after_token(self, req: Request, logprobs: TokenLogprobs | None = None) -> TokenDelta:
        prompt_logprobs = self._sampling.on_token(req)
        delta = self._token_delta(req)
        delta.logprobs, delta.prompt_logprobs = [logprobs] if logprobs else None, prompt_logprobs
        return delta

    def _token_delta(self, req: Request) -> TokenDelta:
        live = self._live[req.request_id]
        token = req.output_token_ids[-1]
        delta = live.detok.add(token)
        if req.status is RequestStatus.SENDING_KV:
            return TokenDelta(req.request_id, [token], delta, finished=False)
        stop = check_stop(req, live.detok.text, len(delta), self.eos_token_ids, self.max_model_len)
        if stop is None:
            return TokenDelta(req.request_id, [token], delta, finished=False)
        delta += live.detok.flush()
        if stop.keep_chars is not None:
            cut = len(live.detok.text) - stop.keep_chars
            live.detok.text = live.detok.text[: stop.keep_chars]
            delta = delta[: max(0, len(delta) - cut)]
        req.finish_reason, req.stop_reason = stop.finish_reason, stop.stop_reason
        self._end(req.request_id, RequestStatus.FINISHED)
        return TokenDelta(
            req.request_id, [token], delta, True, stop.finish_reason, stop.stop_reason
        )

    def _layer_export(self, out: SchedulerOutput) -> LayerExport | None:
        """The per-layer hook of a step (``LayerExport``), or None when no streamed request
        completes its prompt in it.

        The rule (chunked prefill): a layer is streamed only by the step running the prompt's
        last chunk (``sample`` is set on exactly that chunk of a prefill-only request), after
        that step's layer ``i`` has run: only then are all of the prompt's K/V rows of layer
        ``i`` written (earlier chunks, prefix-cache hits, this chunk) and a KDA layer's state
        the state after the whole prompt. Earlier chunks stream nothing, so no KV that is not
        final ever leaves, and each layer leaves exactly once.
        """
        readers: list[tuple[Sink, LayerReader]] = []
        for chunk in out.chunks:
            sink = self._layer_sinks.get(chunk.request_id)
            if sink is None or not chunk.sample:
                continue
            num_tokens = chunk.start + len(chunk.token_ids)
            slot = self.kv.state_slot(chunk.request_id)
            readers.append((sink, self.runner.layer_reader(chunk.block_table, slot, num_tokens)))
            sink.begin()
        return LayerExport(readers, host_copy_for(self.device)) if readers else None

    def _end(self, request_id: str, status: RequestStatus) -> None:
        self._layer_sinks.pop(request_id, None)
        self._sampling.drop(request_id)
        live = self._live.pop(request_id)
        req = live.request
        if status is RequestStatus.ABORTED and req.finish_reason is None:
            req.finish_reason = "abort"
        self.scheduler.finish(req, status)
