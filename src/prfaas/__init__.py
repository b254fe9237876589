"""prfaas: Prefill-as-a-Service, LLM serving across datacenters.

The offline API mirrors vLLM's: ``prfaas.LLM``, ``prfaas.SamplingParams``,
``prfaas.RequestOutput``. They are imported lazily so that the decision packages
(planner, router, sim, transfer, kvcache) can be used without importing torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LLM": "prfaas.engine.llm",
    "SamplingParams": "prfaas.engine.sampling_params",
    "StructuredOutputs": "prfaas.engine.sampling_params",
    "Logprob": "prfaas.engine.logprobs",
    "RequestOutput": "prfaas.engine.outputs",
    "CompletionOutput": "prfaas.engine.outputs",
}

__all__ = [
    "LLM",
    "CompletionOutput",
    "Logprob",
    "RequestOutput",
    "SamplingParams",
    "StructuredOutputs",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prfaas' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
