"""GGUF file → Hugging Face model folder (config.json, model.safetensors, tokenizer files).

The folder is what `transformers.AutoModelForCausalLM.from_pretrained(folder)` and our own
loader read: float32 tensors under Hugging Face names, so nothing downstream knows about GGUF.
Tensors are dequantized here with the `gguf` package and renamed by an explicit table; the
tokenizer is rebuilt by transformers' GGUF tokenizer converter, which needs no network.

Supported architectures: `llama` (SmolLM2, Llama 2/3 without rope scaling), `qwen2`, `qwen3`.
Anything else, or a tensor the table does not name, is a `GGUFError`, never a silent skip.

This module reads no environment variables: the caller chooses the cache folder.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

# Part of the cache key: bump it whenever the folder convert_gguf writes would change.
CONVERTER_VERSION = 1
GGUF_MAGIC = b"GGUF"
_HASH_CHUNK_BYTES = 1 << 20


class GGUFError(ValueError):
    """The file is not a GGUF file, or holds a model this converter does not support."""


@dataclass(frozen=True)
class _Arch:
    model_type: str  # Hugging Face config `model_type`
    hf_class: str  # Hugging Face config `architectures[0]`
    # llama.cpp's converter reorders the rows of Q and K for `llama` (it rotates adjacent pairs);
    # Qwen models use the NeoX rotation, which is Hugging Face's, and are stored as they are.
    permute_qk: bool


_ARCHS = {
    "llama": _Arch("llama", "LlamaForCausalLM", permute_qk=True),
    "qwen2": _Arch("qwen2", "Qwen2ForCausalLM", permute_qk=False),
    "qwen3": _Arch("qwen3", "Qwen3ForCausalLM", permute_qk=False),
}

_GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",  # qwen3
    "attn_k_norm": "self_attn.k_norm",  # qwen3
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_tensor_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`; GGUFError if unknown."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[stem]}.{suffix}"
    match = _LAYER_NAME.fullmatch(gguf_name)
    if match is None or match[2] not in _LAYER_TENSORS:
        raise GGUFError(f"unsupported GGUF tensor {gguf_name!r}")
    return f"model.layers.{match[1]}.{_LAYER_TENSORS[match[2]]}.{match[3]}"


def unpermute_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's row order for a Q or K projection: (num_heads * head_dim, ...) → same shape.

    Within one head of size d, Hugging Face keeps the rotated pairs d/2 apart: rows [0, d/2) are
    the first halves, [d/2, d) the second. llama.cpp stores the pairs adjacent: its row
    `head * d + 2 * i + half` is Hugging Face's row `head * d + half * d/2 + i` (i < d/2, half ∈
    {0, 1}). Reading the rows as (head, i, half) and swapping the last two restores the order.
    For K, num_heads is the number of KV heads.
    """
    half_dim = weight.shape[0] // num_heads // 2
    pairs = weight.reshape(num_heads, half_dim, 2, *weight.shape[1:])
    return pairs.swapaxes(1, 2).reshape(weight.shape)


def open_gguf(gguf_path: Path) -> GGUFReader:
    """Open and parse the header; FileNotFoundError or GGUFError instead of a deep traceback."""
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    with gguf_path.open("rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{gguf_path} is not a GGUF file (it starts with {magic!r})")
    try:
        return GGUFReader(gguf_path)
    except Exception as e:  # the reader fails with struct/index/value errors on a damaged file
        raise GGUFError(f"{gguf_path}: unreadable GGUF file ({type(e).__name__}: {e})") from e


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Write a Hugging Face folder for `gguf_path` into `out_dir` (created if needed); return it.

    Peak memory is about the float32 size of the model (all tensors are held for one
    safetensors file). Not atomic: use `cached_hf_folder` for that.
    """
    start_s = time.perf_counter()
    reader = open_gguf(gguf_path)
    arch_name = str(_field(reader, "general.architecture"))
    if arch_name not in _ARCHS:
        raise GGUFError(f"{gguf_path}: architecture {arch_name!r} is not one of {list(_ARCHS)}")
    arch = _ARCHS[arch_name]
    config = _hf_config(reader, arch_name, arch)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "config.json", config)
    save_file(_hf_tensors(reader, arch, config), str(out_dir / "model.safetensors"))
    _write_tokenizer(gguf_path, reader, out_dir)
    logger.info("converted %s to %s in %.1fs", gguf_path, out_dir, time.perf_counter() - start_s)
    return out_dir


def cached_hf_folder(gguf_path: Path, cache_dir: Path) -> Path:
    """The converted folder for `gguf_path` under `cache_dir`, converting only on the first call.

    The folder is named by the file's content (full sha256, about 1.3 GB/s here: 0.08 s for the
    100 MB default model) and the converter version, so a changed file or converter never reuses
    a stale folder. Conversion goes to a temp folder renamed into place, so the named folder is
    always complete; temp folders left by a crashed conversion are removed on the next call.
    """
    key = cache_key(gguf_path)
    final = cache_dir / key
    if final.is_dir():
        logger.debug("using cached conversion %s", final)
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_dead_temp_dirs(cache_dir, key)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-{os.getpid()}-", dir=cache_dir))
    try:
        convert_gguf(gguf_path, tmp)
        tmp.rename(final)
    except OSError:
        if not final.is_dir():  # else another process finished first: use its folder
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def cache_key(gguf_path: Path) -> str:
    """`<file stem>-<16 hex digits>` from the sha256 of the converter version and the file."""
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    digest = hashlib.sha256(f"prfaas-gguf-v{CONVERTER_VERSION}\n".encode())
    with gguf_path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return f"{gguf_path.stem}-{digest.hexdigest()[:16]}"


def _remove_dead_temp_dirs(cache_dir: Path, key: str) -> None:
    """Remove `.<key>.tmp-<pid>-*` folders whose process is gone (same host assumed)."""
    for path in cache_dir.glob(f".{key}.tmp-*"):
        pid_text = path.name.removeprefix(f".{key}.tmp-").partition("-")[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            logger.info("removing leftover conversion folder %s", path)
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    if field is None:
        if default is None:
            raise GGUFError(f"GGUF metadata {key!r} is missing")
        return default
    return field.contents()


def _hf_config(reader: GGUFReader, arch_name: str, arch: _Arch) -> dict[str, Any]:
    """A Hugging Face config dict from `<arch>.*` and `tokenizer.ggml.*` metadata."""

    def meta(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch_name}.{key}", default)

    scaling = meta("rope.scaling.type", "none")
    if scaling != "none":
        raise GGUFError(f"rope scaling {scaling!r} is not supported")
    num_heads = int(meta("attention.head_count"))
    hidden_size = int(meta("embedding_length"))
    tensor_names = {t.name for t in reader.tensors}
    vocab_size = meta("vocab_size", 0) or len(_field(reader, "tokenizer.ggml.tokens"))
    config: dict[str, Any] = {
        "architectures": [arch.hf_class],
        "model_type": arch.model_type,
        "hidden_size": hidden_size,
        "intermediate_size": int(meta("feed_forward_length")),
        "num_hidden_layers": int(meta("block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(meta("attention.head_count_kv", num_heads)),
        "head_dim": int(meta("attention.key_length", hidden_size // num_heads)),
        "hidden_act": "silu",
        "max_position_embeddings": int(meta("context_length")),
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta("rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "vocab_size": int(vocab_size),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "torch_dtype": "float32",
    }
    if arch.model_type != "qwen2":  # Qwen2 always has q/k/v biases and no such key
        config["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
        config["mlp_bias"] = False
    for name in ("bos", "eos", "padding"):
        token_id = _field(reader, f"tokenizer.ggml.{name}_token_id", -1)
        if token_id >= 0:
            config["pad_token_id" if name == "padding" else f"{name}_token_id"] = int(token_id)
    return config


def _hf_tensors(reader: GGUFReader, arch: _Arch, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every GGUF tensor dequantized to float32 under its Hugging Face name."""
    heads_of = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    tensors: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name)
        # GGUF lists dims fastest-first; numpy/torch want (out_features, in_features).
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        # A copy: for F32 tensors dequantize returns a read-only view of the memory-mapped file.
        weight = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if weight.shape != shape:
            raise GGUFError(f"{tensor.name}: dequantized to {weight.shape}, expected {shape}")
        kind = tensor.name.split(".")[-2]  # blk.N.<kind>.weight
        if arch.permute_qk and kind in heads_of:
            weight = unpermute_qk(weight, heads_of[kind])
        tensors[name] = torch.from_numpy(np.ascontiguousarray(weight))
    return tensors


def _write_tokenizer(gguf_path: Path, reader: GGUFReader, out_dir: Path) -> None:
    """tokenizer.json and tokenizer_config.json (special tokens and the chat template)."""
    from transformers import AutoTokenizer  # slow import, needed only when converting

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    template = reader.get_field("tokenizer.chat_template")
    if template is not None:
        tokenizer.chat_template = template.contents()
    # One source of truth: the template goes into tokenizer_config.json, no chat_template.jinja.
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
