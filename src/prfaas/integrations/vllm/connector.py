"""prfaas's KV connector for vLLM: prefill on one vLLM instance, decode on another, the KV
moving between them over prfaas.transfer (paced per link, codec, mutual TLS, HMAC auth,
deadlines, checksums), layer by layer while the prefill instance still computes.

Load it with (vLLM 0.32, the version pinned by ``make setup-vllm``)::

    --kv-transfer-config '{"kv_connector": "PrfaasConnector",
        "kv_connector_module_path": "prfaas.integrations.vllm.connector",
        "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {...}}'          # keys: integrations/vllm/config.py

Contract (per request, through vLLM's ``kv_transfer_params``; see params.py):
- prefill instance: ``{"prfaas_transfer_id": T, "prfaas_send_to": "host:port"}`` and
  ``max_tokens=1``. In the step that completes the prompt, each attention layer's KV for
  tokens [0, prompt_len) is copied out of vLLM's blocks and pushed as transfer T to the
  decode instance's receiver: wire layers ``L{i}.k`` / ``L{i}.v`` of shape
  (prompt_len, num_kv_heads, head_dim), one token per row (layout.py), engine-neutral.
  A failed send is logged; the decode side notices by its deadline.
- decode instance: ``{"prfaas_transfer_id": T}``, the same prompt. It reports the prompt
  tokens past its local prefix hit, except the last, as loaded asynchronously; the request
  waits (WAITING_FOR_REMOTE_KVS) while a thread waits up to ``load_timeout_s`` for T,
  verifies it is for this prompt (the header's prompt hash) and fits, lands the rows in
  the request's blocks and releases the buffers. A missing, late, refused, misfitting or
  other prompt's transfer is reported through
  ``get_block_ids_with_load_errors``: vLLM recomputes those tokens locally (this needs
  ``kv_load_failure_policy: recompute``, checked at start). Nothing waits without a
  deadline; an aborted request's load is abandoned and its blocks held until it ends.
- both ends must serve the same model: the transfer carries the model fingerprint and the
  receiver refuses another.

Scope: vLLM's CPU attention backend (its block layout is probed, layout.py), one KV cache
group (dense models), no tensor parallelism. The decode side lands a transfer once it is
complete and verified, not layer by layer (the request waits anyway).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorRole,
)

from prfaas.integrations.vllm.config import ConnectorConfig
from prfaas.integrations.vllm.layout import CacheWriter
from prfaas.integrations.vllm.metadata import HandoffMetadata
from prfaas.integrations.vllm.scheduler_side import HandoffScheduler
from prfaas.integrations.vllm.worker_side import HandoffWorker

if TYPE_CHECKING:
    from vllm.config import ModelConfig, VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks, KVCacheManager
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request


def model_fingerprint(config: ConnectorConfig, model_config: ModelConfig) -> bytes:
    """The configured fingerprint, else prfaas's fingerprint of the model folder at vLLM's
    compute dtype: what the reference engine computes for that folder and dtype, so KV
    moves between the two engines (``model.loader.model_fingerprint``)."""
    if config.fingerprint is not None:
        return bytes.fromhex(config.fingerprint)
    folder = Path(model_config.model)
    if not (folder / "config.json").is_file():
        raise ValueError(f"model {model_config.model!r} is not a local folder: set 'fingerprint'")
    from prfaas.config import default_cache_dir
    from prfaas.model.loader import fingerprint_folder
    from prfaas.model.loader import model_fingerprint as bind_dtype

    digest = fingerprint_folder(folder, default_cache_dir())
    return bytes.fromhex(bind_dtype(digest, model_config.dtype))


def cpu_cache_writer(vllm_config: VllmConfig) -> CacheWriter:
    """The CPU attention backend's own cache write (what ``BlockLayout.probe`` runs)."""
    from vllm import _custom_ops as ops
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    cache_dtype = vllm_config.cache_config.cache_dtype
    if not current_platform.is_cpu() or cache_dtype != "auto":
        raise NotImplementedError(
            f"prfaas connector: vLLM's CPU backend with an unquantized KV cache only "
            f"(platform {current_platform.device_name}, cache dtype {cache_dtype})"
        )

    def write(
        key: torch.Tensor, value: torch.Tensor, kv: torch.Tensor, slots: torch.Tensor
    ) -> None:
        num_blocks, heads, block_size, _ = kv.shape
        isa = _get_attn_isa(kv.dtype, block_size, key.shape[-1], cache_dtype)
        key_cache, value_cache = kv.view(num_blocks, heads, 2 * block_size, -1).chunk(2, dim=2)
        ops.cpu_attn_reshape_and_cache(key, value, key_cache, value_cache, slots, isa)

    return write


class PrfaasConnector(KVConnectorBase_V1):
    def __init__(
        self,
        vllm_config: VllmConfig,
        role: KVConnectorRole,
        kv_cache_config: KVCacheConfig,
    ) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        transfer_config = self._kv_transfer_config
        self.config = ConnectorConfig.from_extra(dict(transfer_config.kv_connector_extra_config))
        if transfer_config.is_kv_consumer and transfer_config.kv_load_failure_policy != "recompute":
            raise ValueError(
                "prfaas connector: a decode instance recomputes what a transfer failed to "
                "deliver; set kv_load_failure_policy to 'recompute'"
            )
        block_size = vllm_config.cache_config.block_size
        self.scheduler: HandoffScheduler | None = None
        self.worker: HandoffWorker | None = None
        if role == KVConnectorRole.SCHEDULER:
            self.scheduler = HandoffScheduler(block_size)
        else:
            self.worker = HandoffWorker(
                self.config,
                model_fingerprint(self.config, vllm_config.model_config),
                block_size,
                cpu_cache_writer(vllm_config),
                is_producer=transfer_config.is_kv_producer,
                is_consumer=transfer_config.is_kv_consumer,
            )

    def _meta(self) -> HandoffMetadata:
        meta = self._get_connector_metadata()
        assert isinstance(meta, HandoffMetadata)
        return meta

    # -- worker side ---------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        assert self.worker is not None
        self.worker.register(kv_caches)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        assert self.worker is not None
        self.worker.start_loads(self._meta())

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads are asynchronous: a loading request is not in the running batch

    def save_kv_layer(
        self,
        layer_name: str,
        kv_layer: torch.Tensor,
        attn_metadata: AttentionMetadata,
        **kwargs: Any,
    ) -> None:
        assert self.worker is not None
        self.worker.save_layer(self._meta(), layer_name, kv_layer)

    def wait_for_save(self) -> None:
        return  # rows were copied in save_kv_layer; the streams send on their own threads

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        assert self.worker is not None
        return None, self.worker.finished(finished_req_ids)

    def get_block_ids_with_load_errors(self) -> set[int]:
        assert self.worker is not None
        return self.worker.take_load_errors()

    def shutdown(self) -> None:
        if self.worker is not None:
            self.worker.close()

    # -- scheduler side ------------------------------------------------------------------

    def bind_kv_cache_manager(self, kv_cache_manager: KVCacheManager) -> None:
        super().bind_kv_cache_manager(kv_cache_manager)
        assert self.scheduler is not None
        self.scheduler.bind(kv_cache_manager)

    def on_new_request(self, request: Request) -> None:
        assert self.scheduler is not None
        self.scheduler.on_new_request(request)

    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        assert self.scheduler is not None
        num_tokens = self.scheduler.num_tokens_to_load(request, num_computed_tokens)
        return num_tokens, num_tokens > 0

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        assert self.scheduler is not None
        self.scheduler.after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> HandoffMetadata:
        assert self.scheduler is not None
        return self.scheduler.build_metadata(scheduler_output)

    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        assert self.scheduler is not None
        self.scheduler.on_worker_output(connector_output)

    def request_finished(
        self, request: Request, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        assert self.scheduler is not None
        return self.scheduler.on_finished(request)
