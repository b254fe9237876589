"""vLLM's KV pool use, as its scheduler reports it every step, for the worker's heartbeat
and leak check: a stat logger (vLLM's ``StatLoggerBase``) that keeps the latest figure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm.config import VllmConfig


class PoolGauge:
    def __init__(self) -> None:
        self.kv_usage = 0.0  # fraction of vLLM's KV blocks held by requests, 0..1
        self.num_running = 0
        self.num_waiting = 0

    def factory(self, vllm_config: VllmConfig, engine_index: int = 0) -> Any:
        """vLLM's stat-logger factory signature: the logger writes into this gauge."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        gauge = self

        class _Logger(StatLoggerBase):
            def __init__(self, vllm_config: VllmConfig, engine_index: int = 0) -> None:
                pass

            def record(
                self,
                scheduler_stats: Any,
                iteration_stats: Any,
                mm_cache_stats: Any = None,
                engine_idx: int = 0,
            ) -> None:
                if scheduler_stats is not None:
                    gauge.kv_usage = scheduler_stats.kv_cache_usage
                    gauge.num_running = scheduler_stats.num_running_reqs
                    gauge.num_waiting = scheduler_stats.num_waiting_reqs

            def log_engine_initialized(self) -> None:
                pass

        return _Logger(vllm_config, engine_index)
