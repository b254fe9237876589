"""What the connector's scheduler half tells its worker half each step (vLLM's metadata)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata

from prfaas.integrations.vllm.params import LinkChoice

Address = tuple[str, int]


@dataclass(frozen=True)
class SendSpec:
    """Prefill side: this step completes the prompt; push tokens [0, num_tokens) of every
    layer as transfer ``transfer_id`` to ``address``. ``prompt_token_ids`` are hashed into
    the transfer's header (``HandoffWorker.prompt_hash``)."""

    request_id: str
    transfer_id: str
    address: Address
    block_ids: tuple[int, ...]  # the request's blocks, in token order
    num_tokens: int
    prompt_token_ids: tuple[int, ...]  # len == num_tokens
    link: LinkChoice | None = None  # None: the connector's configured link
    cache_salt: str | None = None  # vLLM's per-request salt: the tenant's (params.salt_bytes)


@dataclass(frozen=True)
class LoadSpec:
    """Decode side: land tokens [start, end) of transfer ``transfer_id``. ``block_ids`` are
    the blocks covering exactly those tokens, in order (``start`` is a block boundary: a
    local prefix hit is whole blocks), so token t goes to ``block_ids[(t - start) // B]``.
    If the load fails, these are the blocks reported for recomputation. The transfer lands
    only if its header's prompt hash equals this side's hash of ``prompt_token_ids``."""

    request_id: str
    transfer_id: str
    block_ids: tuple[int, ...]
    start: int
    end: int
    prompt_token_ids: tuple[int, ...]  # the whole prompt, not only [start, end)
    cache_salt: str | None = None


@dataclass
class HandoffMetadata(KVConnectorMetadata):
    sends: list[SendSpec] = field(default_factory=list)
    loads: list[LoadSpec] = field(default_factory=list)
