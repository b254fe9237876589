"""Size the KV cache from the memory budget and build its manager and runner.

Dense models: every layer keeps paged K/V, the budget is all blocks. Hybrid models (some
layers keep a linear-attention state): the budget is split by ``StateBudget`` into KV blocks,
live state slots and snapshot slots. Sizes come from ``kvcache.spec``, the accounting the
planner uses, so the pool holds exactly what S_kv predicts.
"""

from __future__ import annotations

import torch
from torch import nn

from prfaas.config import EngineConfig
from prfaas.engine.handoff import FULL_ATTENTION, LayerLayout
from prfaas.engine.hybrid_runner import HybridModelRunner
from prfaas.engine.runner import ModelRunner, Runner
from prfaas.kvcache.hybrid import HybridKVCacheManager, StateBudget, StateCacheConfig
from prfaas.kvcache.manager import CacheManager, KVCacheManager
from prfaas.kvcache.spec import LayerSpec, LinearStateSpec, kv_bytes


def build_kv_cache(
    config: EngineConfig,
    specs: list[LayerSpec],
    layout: list[LayerLayout],
    model: nn.Module,
    dtype: torch.dtype,
    device: torch.device,
    state_config: StateCacheConfig,
) -> tuple[CacheManager, Runner]:
    budget_bytes = int(config.kv_cache_memory_gb * 2**30)
    linear = [s for s in specs if isinstance(s, LinearStateSpec)]
    if not linear:
        block_bytes = kv_bytes(specs, config.block_size)
        num_blocks = config.num_kv_blocks or max(1, budget_bytes // block_bytes)
        first = next(e for e in layout if e.kind == FULL_ATTENTION)
        runner = ModelRunner(
            model, num_blocks, config.block_size, first.num_kv_heads, first.head_dim, dtype, device
        )
        return KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching), runner
    per_token = [s for s in specs if not isinstance(s, LinearStateSpec)]
    budget = StateBudget.split(
        budget_bytes,
        block_bytes=kv_bytes(per_token, config.block_size),
        state_bytes=kv_bytes(linear, 1),
        config=state_config,
        max_num_seqs=config.max_num_seqs,
        num_blocks=config.num_kv_blocks,
    )
    manager = HybridKVCacheManager(
        budget, config.block_size, state_config.snapshot_interval, config.enable_prefix_caching
    )
    hybrid = HybridModelRunner(
        model, budget.num_blocks, config.block_size, manager.states.num_slots, dtype, device
    )
    return manager, hybrid
