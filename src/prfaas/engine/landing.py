"""A prompt's KV in and out of a request's blocks: the hand-off on the engine side.

Out (prefill side): ``export_payload`` reads a finished prefill's blocks into a
``KvPayload``. In (decode side): a reserved request (WAITING_FOR_KV, parked with its blocks)
takes a payload with ``land_payload``; it then decodes from the shipped first token, or, when
the payload came without one, computes its last prompt token here first.
"""

from __future__ import annotations

import torch

from prfaas.engine.handoff import KvImportError, KvPayload, LayerLayout
from prfaas.engine.request import Request, RequestStatus
from prfaas.engine.runner import Runner
from prfaas.engine.scheduler import Scheduler
from prfaas.kvcache.manager import CacheManager as Kv


def export_payload(
    req: Request,
    kv: Kv,
    runner: Runner,
    fingerprint: str,
    dtype: torch.dtype,
    layout: list[LayerLayout],
) -> KvPayload:
    """The KV of a prefill-only request that finished its prefill (SENDING_KV)."""
    tensors = runner.read_payload(
        kv.block_table(req.request_id), kv.state_slot(req.request_id), req.num_prompt_tokens
    )
    return KvPayload(
        model_fingerprint=fingerprint,
        token_ids=list(req.prompt_token_ids),
        first_token_id=req.output_token_ids[0],
        dtype=str(dtype).removeprefix("torch."),
        layout=list(layout),
        kv=tensors.kv,
        latent=tensors.latent,
        states=tensors.states,
    )


def land_payload(
    req: Request, payload: KvPayload, kv: Kv, runner: Runner, scheduler: Scheduler
) -> bool:
    """Write a validated ``payload`` into the reserved ``req``'s blocks and move it on.
    True: it decodes, the payload's first token appended (the caller streams it); False: it
    computes its last prompt token first. Raises KvImportError, the request left waiting."""
    if req.status is not RequestStatus.WAITING_FOR_KV:
        raise KvImportError(f"request {req.request_id} is not waiting for KV")
    if payload.token_ids != req.prompt_token_ids:
        raise KvImportError("payload tokens differ from the request's prompt")
    if payload.first_token_id is None:
        _check_tokenless(req, payload)
    runner.write_payload(kv.block_table(req.request_id), kv.state_slot(req.request_id), payload)
    if payload.first_token_id is None:
        # No first token came (a vLLM prefill instance does not know it while its KV
        # streams): the rows of every prompt token but the last are kept, and the last
        # one is computed here, as after a prefix hit; its row is written again.
        req.num_computed_tokens = req.num_cached_tokens = payload.num_tokens - 1
        kv.cache_blocks(req.request_id, req.block_hashes, req.num_computed_tokens)
        scheduler.unpark_prefilling(req)
        return False
    req.num_computed_tokens = req.num_cached_tokens = payload.num_tokens
    kv.cache_blocks(req.request_id, req.block_hashes, req.num_computed_tokens)
    req.move_to(RequestStatus.DECODING)
    scheduler.unpark_running(req)
    req.append_token(payload.first_token_id)
    return True


def _check_tokenless(req: Request, payload: KvPayload) -> None:
    """A payload without the first token lands only where recomputing the last prompt token
    is exact: per-token KV (a linear state already covers that token) and no prompt logprobs
    asked for (this side would see only the last position)."""
    if payload.states:
        raise KvImportError("a linear-attention state needs the first token with it")
    if req.params.prompt_logprobs is not None:
        raise KvImportError("prompt logprobs need the first token's layer with the KV")
