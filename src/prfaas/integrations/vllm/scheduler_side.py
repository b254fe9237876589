"""The connector's scheduler half: which requests push KV, which wait for it, and when.

Plain bookkeeping over request ids and block ids (no tensors, no sockets). Invariants:
- a request's hand-off params are used once: a prefill instance sends at most once per
  request (the step that completes its prompt); a decode instance loads at most once (a
  failed load is recomputed, never retried), so a recompute never waits again;
- a request is in ``_loading`` from the step its load is issued until the worker reports it
  finished (landed or failed); finishing such a request (an abort) delays freeing its blocks
  until then, so a late landing never writes into blocks another request owns.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prfaas.integrations.vllm.metadata import HandoffMetadata, LoadSpec, SendSpec
from prfaas.integrations.vllm.params import HandoffParams

if TYPE_CHECKING:
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks, KVCacheManager
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

logger = logging.getLogger(__name__)


class HandoffScheduler:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._params: dict[str, HandoffParams] = {}
        self._prompts: dict[str, tuple[int, ...]] = {}
        self._salts: dict[str, str | None] = {}
        self._new_loads: list[LoadSpec] = []
        self._loading: set[str] = set()
        self._kv_cache_manager: KVCacheManager | None = None

    def bind(self, kv_cache_manager: KVCacheManager) -> None:
        self._kv_cache_manager = kv_cache_manager

    def on_new_request(self, request: Request) -> None:
        try:
            params = HandoffParams.parse(request.kv_transfer_params)
        except ValueError as exc:
            # The engine must not die of one client's bad params: serve it locally.
            logger.error("request %s: ignoring bad hand-off params: %s", request.request_id, exc)
            return
        if params is None:
            return
        if request.prompt_token_ids is None:  # prompt embeddings: no ids to hash
            logger.error("request %s: no prompt token ids, served locally", request.request_id)
            return
        self._params[request.request_id] = params
        self._prompts[request.request_id] = tuple(request.prompt_token_ids)
        self._salts[request.request_id] = request.cache_salt

    # -- decode side ---------------------------------------------------------------------

    def num_tokens_to_load(self, request: Request, num_computed_tokens: int) -> int:
        """Prompt tokens past the local prefix hit that will come over the link; the last
        prompt token is always computed here (its logits give the first output token)."""
        params = self._params.get(request.request_id)
        if params is None or params.send_to is not None:
            return 0
        return max(0, request.num_prompt_tokens - 1 - num_computed_tokens)

    def after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external: int) -> None:
        params = self._params.get(request.request_id)
        if num_external == 0 or params is None or params.send_to is not None:
            return
        del self._params[request.request_id]  # used once
        end = request.num_prompt_tokens - 1
        start = end - num_external
        if start % self.block_size:
            raise AssertionError(f"load starts at {start}, not on a block boundary")
        (block_ids,) = blocks.get_block_ids()
        first, last = start // self.block_size, (end - 1) // self.block_size
        covering = tuple(block_ids[first : last + 1])
        prompt = self._prompts[request.request_id]
        self._new_loads.append(
            LoadSpec(
                request.request_id,
                params.transfer_id,
                covering,
                start,
                end,
                prompt,
                self._salts.get(request.request_id),
            )
        )
        self._loading.add(request.request_id)

    def on_worker_output(self, output: KVConnectorOutput) -> None:
        for request_id in output.finished_recving or ():
            self._loading.discard(request_id)

    # -- prefill side --------------------------------------------------------------------

    def _send_spec(self, request_id: str, num_done: int) -> SendSpec | None:
        params = self._params.get(request_id)
        prompt = self._prompts.get(request_id, ())
        if params is None or params.send_to is None or num_done < len(prompt):
            return None
        del self._params[request_id]  # used once
        assert self._kv_cache_manager is not None, "bind_kv_cache_manager was not called"
        (block_ids,) = self._kv_cache_manager.get_block_ids(request_id)
        return SendSpec(
            request_id,
            params.transfer_id,
            params.send_to,
            tuple(block_ids),
            len(prompt),
            prompt,
            params.link,
            self._salts.get(request_id),
        )

    # -- every step ----------------------------------------------------------------------

    def build_metadata(self, out: SchedulerOutput) -> HandoffMetadata:
        meta = HandoffMetadata(loads=self._new_loads)
        self._new_loads = []
        progress = [(r.req_id, r.num_computed_tokens) for r in out.scheduled_new_reqs]
        cached = out.scheduled_cached_reqs
        progress += list(zip(cached.req_ids, cached.num_computed_tokens, strict=True))
        for request_id, num_computed in progress:
            num_done = num_computed + out.num_scheduled_tokens.get(request_id, 0)
            spec = self._send_spec(request_id, num_done)
            if spec is not None:
                meta.sends.append(spec)
        return meta

    def on_finished(self, request: Request) -> tuple[bool, dict[str, Any] | None]:
        """(delay freeing the blocks?, params for the output). Sends copy their rows during
        the forward pass, so only a load still in flight holds blocks."""
        self._params.pop(request.request_id, None)
        self._prompts.pop(request.request_id, None)
        self._salts.pop(request.request_id, None)
        return request.request_id in self._loading, None
