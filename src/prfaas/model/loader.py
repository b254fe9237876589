"""Load a model for the engine: a Hugging Face folder, a .gguf file, or the embedded default.

A GGUF file is converted once into a cached Hugging Face folder (``model/gguf.py``); both
paths then load the same way. The *model fingerprint* is a digest of the config, of every
weight byte and of the dtype the engine computes in: it enters every block hash and every KV
transfer, and a fleet admits only workers of one fingerprint, so KV computed under other
weights or in another dtype is never reused and a worker of another dtype is refused when it
registers rather than at each transfer.

Memory: the model is built on the ``meta`` device, given the target dtype there (free), and
only then allocated on the target device; each checkpoint tensor is read on its own (no memory
map, ``safetensors_file``) and copied into place. Peak memory is about one copy of the
weights in the target dtype plus the largest merged tensor (``benchmarks/load_memory.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prfaas.kvcache.spec import FullAttentionSpec, specs_from_hf_config
from prfaas.model.kimi import KimiLinearForCausalLM
from prfaas.model.llama import LlamaForCausalLM
from prfaas.model.safetensors_file import SafetensorsFormatError, iter_tensors

logger = logging.getLogger(__name__)

# model_type -> constructor(hf_config, max_positions)
MODEL_REGISTRY: dict[str, Callable[[Any, int], nn.Module]] = {
    "llama": LlamaForCausalLM,
    "mistral": LlamaForCausalLM,
    "qwen2": LlamaForCausalLM,
    "qwen3": LlamaForCausalLM,
    "kimi_linear": KimiLinearForCausalLM,
}


class ModelLoadError(ValueError):
    """The model path or its files cannot be used; the message says why."""


@dataclass
class LoadedModel:
    model: nn.Module
    hf_config: Any
    tokenizer: Any
    folder: Path
    fingerprint: str
    max_model_len: int


def resolve_model_folder(model: str | None, cache_dir: Path) -> Path:
    """The Hugging Face folder for ``model`` (converting a GGUF file once, cached)."""
    from prfaas.model.default import default_gguf_path
    from prfaas.model.gguf import cached_hf_folder

    if model is None:
        return cached_hf_folder(default_gguf_path(), cache_dir / "gguf")
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path {str(path)!r} does not exist (no hub downloads)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path}: a model file must be .gguf; else pass a folder")
        return cached_hf_folder(path, cache_dir / "gguf")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: no config.json in the model folder")
    return path


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder}: no .safetensors weights")
    return files


def iter_weights(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        try:
            yield from iter_tensors(path)
        except SafetensorsFormatError as e:
            raise ModelLoadError(str(e)) from e


def model_fingerprint(weights_digest: str, dtype: torch.dtype) -> str:
    """The weights' digest bound to the compute dtype (KV of another dtype is other KV)."""
    name = str(dtype).removeprefix("torch.")
    return hashlib.blake2b(f"{weights_digest}/{name}".encode(), digest_size=16).hexdigest()


def fingerprint_folder(folder: Path, cache_dir: Path) -> str:
    """blake2b over config.json and all weight bytes; memoized by (path, size, mtime)."""
    files = [folder / "config.json", *weight_files(folder)]
    stat_key = hashlib.sha256(
        json.dumps(
            [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        ).encode()
    ).hexdigest()
    memo = cache_dir / "fingerprints" / stat_key
    if memo.is_file():
        return memo.read_text().strip()
    h = hashlib.blake2b(digest_size=16)
    for path in files:
        h.update(path.name.encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    digest = h.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    # A name of this process's own: workers of one deployment fingerprint the same folder at
    # once, and a shared temporary name would be moved away under one of them.
    tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
    tmp.write_text(digest)
    tmp.replace(memo)
    return digest


def _cap_at_sliding_window(hf_config: Any, limit: int, folder: Path) -> int:
    """The engine's attention is full: within a sliding window the two are equal, beyond it
    they are not, so a model with an active window serves contexts up to the window only."""
    specs = specs_from_hf_config(hf_config.to_dict())
    windows = [
        s.sliding_window
        for s in specs
        if isinstance(s, FullAttentionSpec) and s.sliding_window is not None
    ]
    if windows and min(windows) < limit:
        logger.warning(
            "%s: sliding-window attention (window %d) is served as full attention; "
            "max_model_len capped at the window, where the two are equal",
            folder,
            min(windows),
        )
        return min(windows)
    return limit


def load_model(
    model: str | None,
    device: torch.device,
    dtype: torch.dtype | None,
    cache_dir: Path,
    max_model_len: int | None = None,
) -> LoadedModel:
    from transformers import AutoConfig, AutoTokenizer

    folder = resolve_model_folder(model, cache_dir)
    try:
        hf_config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # transformers raises many kinds; the user needs the message
        raise ModelLoadError(f"{folder}: cannot read config.json: {e}") from e
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in MODEL_REGISTRY:
        raise ModelLoadError(
            f"{folder}: model_type {model_type!r} not supported; known: {sorted(MODEL_REGISTRY)}"
        )
    # Kimi Linear names its context limit model_max_length (no position embeddings).
    positions = getattr(hf_config, "max_position_embeddings", None)
    limit = int(positions or getattr(hf_config, "model_max_length", 0) or 0) or 4096
    limit = _cap_at_sliding_window(hf_config, limit, folder)
    if max_model_len is not None:
        if max_model_len > limit:
            raise ModelLoadError(f"max_model_len {max_model_len} exceeds the model's {limit}")
        limit = max_model_len
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        net = MODEL_REGISTRY[model_type](hf_config, limit)
    # Cast while still on meta (no memory), then allocate once, in the target dtype.
    net = net.to(dtype=dtype).to_empty(device=device)
    net.load_weights(iter_weights(weight_files(folder)))  # type: ignore[operator]
    net.eval()
    return LoadedModel(
        model=net,
        hf_config=hf_config,
        tokenizer=tokenizer,
        folder=folder,
        fingerprint=model_fingerprint(fingerprint_folder(folder, cache_dir), dtype),
        max_model_len=limit,
    )
