"""Cross-cluster cache pull, the receiving side (abundant bandwidth, paper section 3.4.3).

It runs on whichever instance the router chose to prefill (any role, usually a prefill
instance), so it belongs to the worker, not to the decode role, though it lands KV from
the receiver as the decode role does (``decode/kv_import.py``).

When the router picks a prefill instance in one cluster but a longer prefix of the prompt is
cached in the other, the gateway has the holder ship that prefix's KV here first. This role
waits for it on the worker's KV receiver and lands it as prefix cache only (no request
stays alive), so the prefill that follows hits it. A pull that fails or misses its deadline
costs nothing but time: the prefill then computes the prefix itself. It holds nothing
either: the receiver abandons the request, freeing what landed or is landing and refusing
a late send.
"""

from __future__ import annotations

import asyncio
import logging

from prfaas.decode.kv_import import check_prompt, wire_to_payload
from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.handoff import KvPayload, LayerLayout
from prfaas.kvcache.hashing import prompt_hash, root_hash
from prfaas.messages import PullCommand, PullResult
from prfaas.transfer.errors import TransferError
from prfaas.transfer.receiver import KvReceiver

logger = logging.getLogger(__name__)


class PullRole:
    def __init__(
        self, engine: AsyncEngine, receiver: KvReceiver, layout: list[LayerLayout]
    ) -> None:
        self.engine, self.receiver, self.layout = engine, receiver, layout

    def _wait(self, cmd: PullCommand) -> KvPayload:
        received = self.receiver.wait(cmd.request_id, timeout_s=cmd.deadline_s)
        try:
            root = root_hash(self.engine.fingerprint, bytes.fromhex(cmd.tenant_salt_hex))
            check_prompt(received, prompt_hash(cmd.prompt_token_ids, self.engine.block_size, root))
            return wire_to_payload(received, cmd.prompt_token_ids, self.layout)  # a copy
        finally:
            self.receiver.release(cmd.request_id)

    async def run(self, cmd: PullCommand) -> PullResult:
        salt = bytes.fromhex(cmd.tenant_salt_hex)
        try:
            payload = await asyncio.to_thread(self._wait, cmd)
            cached = await self.engine.import_prefix(payload, tenant_salt=salt)
        except (TransferError, ValueError, TimeoutError) as e:  # KvImportError is a ValueError
            self.receiver.abandon(cmd.request_id, f"cache pull failed: {e}")
            logger.warning("cache pull %s failed: %s", cmd.request_id, e)
            return PullResult(request_id=cmd.request_id, ok=False, error=str(e)[:1024])
        except BaseException:  # cancelled (the caller left) or a bug: nothing stays held
            self.receiver.abandon(cmd.request_id, "cache pull cancelled")
            raise
        return PullResult(request_id=cmd.request_id, ok=True, cached_tokens=cached)
