"""Frozen configuration per component, resolved and validated at the edge.

Environment variables are read here and nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")
CLUSTER_TOKEN_ENV = "PRFAAS_CLUSTER_TOKEN"
SERVER_SECRET_ENV = "PRFAAS_SERVER_SECRET"
# Set to 1 in a worker's environment: it serves /internal/fault (tests and drills only).
TEST_FAULTS_ENV = "PRFAAS_TEST_FAULTS"


def cluster_token_from_env() -> str | None:
    """The shared secret workers and the gateway authenticate each other with."""
    return os.environ.get(CLUSTER_TOKEN_ENV) or None


def server_secret_from_env() -> bytes | None:
    """The secret tenant salts are derived from; gateways that share a kv index share it
    (else the same prompt hashes differently at each). Unset: random per gateway."""
    value = os.environ.get(SERVER_SECRET_ENV)
    return value.encode() if value else None


def default_cache_dir() -> Path:
    """Where converted models and fingerprints are cached (``PRFAAS_CACHE_DIR`` overrides)."""
    env = os.environ.get("PRFAAS_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "prfaas"


@dataclass(frozen=True)
class EngineConfig:
    """One inference instance. ``None`` fields are resolved by ``resolve`` before freezing."""

    model: str | None = None  # HF folder or .gguf file; None = the embedded default
    device: str = "auto"  # auto | cpu | cuda[:N]
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (weights and KV)
    block_size: int = 16  # tokens per KV block
    kv_cache_memory_gb: float = 2.0  # memory for KV blocks (GiB); ignored if num_kv_blocks set
    num_kv_blocks: int | None = None
    max_num_batched_tokens: int = 2048  # token budget of one step (chunked prefill)
    max_num_seqs: int = 64  # requests running at once
    max_model_len: int | None = None  # context limit; default: the model's
    enable_prefix_caching: bool = True
    cache_dir: Path | None = None
    num_threads: int | None = None  # CPU threads for torch; None = torch's default
    seed: int = 0

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {DTYPES}, got {self.dtype!r}")
        if self.kv_cache_memory_gb <= 0:
            raise ValueError("kv_cache_memory_gb must be positive")
        if self.num_kv_blocks is not None and self.num_kv_blocks <= 0:
            raise ValueError("num_kv_blocks must be positive")
        if self.max_num_batched_tokens < self.block_size:
            raise ValueError("max_num_batched_tokens must be at least block_size")
        if self.max_num_seqs <= 0:
            raise ValueError("max_num_seqs must be positive")
        if self.max_model_len is not None and self.max_model_len <= 1:
            raise ValueError("max_model_len must be > 1")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()


def faults_allowed() -> bool:
    """Whether this process may have faults switched on (``TEST_FAULTS_ENV``)."""
    return os.environ.get(TEST_FAULTS_ENV) == "1"
