"""Per-layer KV state specs and their sizes in bytes, read from a Hugging Face ``config.json``.

Shared by the engine (pool accounting, payload sizes) and the planner (S_kv(l)); plain Python.
Three layer kinds, each knowing its own size rule:

- ``FullAttentionSpec``: K and V per kv head per token, each ``(num_tokens, num_kv_heads,
  head_dim)`` in the KV dtype; a sliding window bounds the tokens kept.
- ``MLASpec``: one compressed latent plus the decoupled rope key per token
  (``kv_lora_rank + qk_rope_head_dim`` values); no separate V.
- ``LinearStateSpec``: a fixed-size per-request state (recurrent matrix, short-conv window),
  independent of the token count; each part has its own dtype (recurrent states are float32).

What this module does not know: tensor layouts beyond sizes, quantized KV codecs, block
placement. ``specs_from_hf_config`` understands the config conventions of Llama/Qwen/Mistral
(GQA, sliding windows), DeepSeek/Kimi (MLA), Kimi Linear (KDA), Qwen3-Next/Qwen3.5 (Gated
DeltaNet), MiMo-V2 (SWA + GA), Bailing/Ring linear and MiniMax-01 (lightning attention),
Mamba2 and Nemotron-H (Mamba2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "float": 4,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "fp8": 1,
}
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class FullAttentionSpec:
    """Softmax attention (MHA/GQA/MQA), optionally sliding-window.

    Per token: K ``(num_kv_heads, head_dim)`` + V ``(num_kv_heads, v_head_dim)``.
    ``v_head_dim`` defaults to ``head_dim``; ``sliding_window`` (tokens) bounds what is kept.
    """

    num_kv_heads: int
    head_dim: int
    dtype_bytes: int
    sliding_window: int | None = None
    v_head_dim: int | None = None

    @property
    def bytes_per_token(self) -> int:
        v_dim = self.head_dim if self.v_head_dim is None else self.v_head_dim
        return self.num_kv_heads * (self.head_dim + v_dim) * self.dtype_bytes

    def kept_tokens(self, num_tokens: int) -> int:
        if self.sliding_window is None:
            return num_tokens
        return min(num_tokens, self.sliding_window)

    def kv_bytes(self, num_tokens: int) -> int:
        return self.kept_tokens(num_tokens) * self.bytes_per_token

    def kv_bytes_block_rounded(self, num_tokens: int, block_size: int) -> int:
        if self.sliding_window is None or num_tokens <= self.sliding_window:
            return _ceil_div(num_tokens, block_size) * block_size * self.bytes_per_token
        # Live tokens are [num_tokens - window, num_tokens); count the blocks they touch.
        first_block = (num_tokens - self.sliding_window) // block_size
        last_block = (num_tokens - 1) // block_size
        return (last_block - first_block + 1) * block_size * self.bytes_per_token


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention: per token ``kv_lora_rank`` latent + ``qk_rope_head_dim``."""

    kv_lora_rank: int
    qk_rope_head_dim: int
    dtype_bytes: int

    @property
    def bytes_per_token(self) -> int:
        return (self.kv_lora_rank + self.qk_rope_head_dim) * self.dtype_bytes

    def kv_bytes(self, num_tokens: int) -> int:
        return num_tokens * self.bytes_per_token

    def kv_bytes_block_rounded(self, num_tokens: int, block_size: int) -> int:
        return _ceil_div(num_tokens, block_size) * block_size * self.bytes_per_token


@dataclass(frozen=True)
class StatePart:
    """One tensor of a fixed-size state, e.g. ``recurrent`` (heads, d_k, d_v) in float32.

    ``shape`` is the tensor's shape where the engine stores this part as one tensor (KDA);
    empty where only the size is known.
    """

    name: str
    num_elements: int
    dtype_bytes: int
    shape: tuple[int, ...] = ()

    @property
    def num_bytes(self) -> int:
        return self.num_elements * self.dtype_bytes


@dataclass(frozen=True)
class LinearStateSpec:
    """Linear attention / SSM layer: one fixed-size state per request, whatever its length.

    ``kind`` names the family (``kda``, ``gated_deltanet``, ``mamba2``, ``lightning``). A state
    is reusable only at the exact length it was taken (the prefix-cache rule lives elsewhere).
    """

    kind: str
    parts: tuple[StatePart, ...]

    @property
    def state_bytes(self) -> int:
        return sum(part.num_bytes for part in self.parts)

    def kv_bytes(self, num_tokens: int) -> int:
        return self.state_bytes if num_tokens > 0 else 0

    def kv_bytes_block_rounded(self, num_tokens: int, block_size: int) -> int:
        return self.kv_bytes(num_tokens)


LayerSpec = FullAttentionSpec | MLASpec | LinearStateSpec


def kv_bytes(specs: Sequence[LayerSpec], num_tokens: int) -> int:
    """Bytes of KV state a request of ``num_tokens`` tokens holds across all layers."""
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    return sum(spec.kv_bytes(num_tokens) for spec in specs)


def kv_bytes_block_rounded(specs: Sequence[LayerSpec], num_tokens: int, block_size: int) -> int:
    """Like ``kv_bytes`` with per-token layers rounded up to whole blocks of ``block_size``."""
    if num_tokens < 0 or block_size <= 0:
        raise ValueError(f"need num_tokens >= 0 and block_size > 0, got {num_tokens}, {block_size}")
    return sum(spec.kv_bytes_block_rounded(num_tokens, block_size) for spec in specs)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------
# Hugging Face config.json -> one spec per layer


class ConfigFormatError(ValueError):
    """The config lacks a key this layer type needs, or holds an unknown layer type."""


def specs_from_hf_config(
    config: Mapping[str, Any],
    kv_dtype_bytes: int | None = None,
    state_dtype_bytes: int = FLOAT32_BYTES,
) -> list[LayerSpec]:
    """One ``LayerSpec`` per decoder layer (MTP/draft layers excluded).

    ``kv_dtype_bytes`` defaults to the config's ``torch_dtype``/``dtype`` (bfloat16 if absent)
    and applies to per-token KV and short-conv windows; ``state_dtype_bytes`` applies to the
    recurrent states (float32 in the KDA/GDN/lightning kernels and by default here for Mamba2).
    """
    cfg: Mapping[str, Any] = config.get("text_config") or config
    dtype_name = next(
        (c.get(k) for c in (cfg, config) for k in ("torch_dtype", "dtype") if c.get(k)), None
    )
    model_dtype = kv_dtype_bytes or _dtype_bytes(dtype_name)
    kinds = _layer_kinds(cfg)
    specs: list[LayerSpec] = []
    for kind in kinds:
        if kind == "full":
            specs.append(_full_spec(cfg, model_dtype))
        elif kind == "sliding":
            specs.append(_sliding_spec(cfg, model_dtype))
        elif kind == "kda":
            specs.append(_kda_spec(cfg, model_dtype, state_dtype_bytes))
        elif kind == "gated_deltanet":
            specs.append(_gdn_spec(cfg, model_dtype, state_dtype_bytes))
        elif kind == "lightning":
            specs.append(_lightning_spec(cfg, state_dtype_bytes))
        elif kind == "mamba2":
            specs.append(_mamba2_spec(cfg, model_dtype, state_dtype_bytes))
        else:  # pragma: no cover - _layer_kinds only yields the kinds above
            raise ConfigFormatError(f"unknown layer kind {kind!r}")
    return specs


def _dtype_bytes(name: object) -> int:
    if name is None:
        return 2
    key = str(name).removeprefix("torch.")
    if key not in DTYPE_BYTES:
        raise ConfigFormatError(f"unknown dtype {name!r}; known: {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[key]


def _require(cfg: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    raise ConfigFormatError(f"config needs one of {list(keys)}")


def _layer_kinds(cfg: Mapping[str, Any]) -> list[str]:
    """Layer kinds in order: full | sliding | kda | gated_deltanet | lightning | mamba2.

    ``model_type`` decides first where it names a family whose ``layer_types`` words mean
    something of its own (Kimi Linear's ``linear_attention`` is KDA, not Gated DeltaNet); the
    key-based rules below serve configs without a known ``model_type``.
    """
    num_layers = int(_require(cfg, "num_hidden_layers", "n_layer", "num_layers"))
    linear_attn = cfg.get("linear_attn_config")
    if cfg.get("model_type") == "kimi_linear" or isinstance(linear_attn, Mapping):
        return _kimi_layer_kinds(cfg, num_layers)
    if cfg.get("layer_types") is not None:
        names = {
            "full_attention": "full",
            "attention": "full",
            "sliding_attention": "sliding",
            "linear_attention": "gated_deltanet",
            "mamba": "mamba2",
        }
        kinds = []
        for name in cfg["layer_types"]:
            if name not in names:
                raise ConfigFormatError(f"unknown layer_types entry {name!r}")
            kinds.append(names[name])
        return kinds[:num_layers]
    if cfg.get("hybrid_layer_pattern") is not None:  # MiMo-V2: 0 = global, 1 = sliding window
        return ["sliding" if int(p) == 1 else "full" for p in cfg["hybrid_layer_pattern"]][
            :num_layers
        ]
    if cfg.get("full_attention_interval") is not None and cfg.get("linear_num_value_heads"):
        interval = int(cfg["full_attention_interval"])
        return ["full" if (i + 1) % interval == 0 else "gated_deltanet" for i in range(num_layers)]
    if cfg.get("layer_group_size") is not None:  # Bailing/Ring linear: every g-th layer global
        group = int(cfg["layer_group_size"])
        tail_start = (num_layers // group) * group
        return [
            "full" if (i + 1) % group == 0 or i >= tail_start else "lightning"
            for i in range(num_layers)
        ]
    if cfg.get("attn_type_list") is not None:  # MiniMax-01: 0 = lightning, 1 = softmax
        return ["full" if int(t) == 1 else "lightning" for t in cfg["attn_type_list"]][:num_layers]
    if cfg.get("hybrid_override_pattern") is not None:  # Nemotron-H: M mamba, * attention, - MLP
        return [
            "mamba2" if c == "M" else "full" for c in cfg["hybrid_override_pattern"] if c in "M*"
        ]
    if cfg.get("layers_block_type") is not None:
        return ["mamba2" if t == "mamba" else "full" for t in cfg["layers_block_type"]]
    if cfg.get("model_type") in ("mamba2", "mamba"):
        return ["mamba2"] * num_layers
    sliding = cfg.get("sliding_window") is not None and cfg.get("use_sliding_window", True)
    return ["sliding" if sliding else "full"] * num_layers


def _kimi_layer_kinds(cfg: Mapping[str, Any], num_layers: int) -> list[str]:
    """Kimi Linear, as the checkpoint saves it (1-based ``kda_layers`` in ``linear_attn_config``)
    or as transformers' ``KimiLinearConfig`` saves it (``layer_types``); transformers' default
    pattern (every 4th layer full attention, counting from 1) when neither is given."""
    linear_attn = cfg.get("linear_attn_config") or {}
    if cfg.get("layer_types") is not None:
        kimi = {"linear_attention": "kda", "full_attention": "full"}
        if not set(cfg["layer_types"]) <= set(kimi):
            raise ConfigFormatError(f"unknown Kimi Linear layer_types {cfg['layer_types']}")
        return [kimi[name] for name in cfg["layer_types"]][:num_layers]
    if "kda_layers" in linear_attn:
        kda_layers = {int(i) for i in linear_attn["kda_layers"]}  # 1-based
        return ["kda" if i + 1 in kda_layers else "full" for i in range(num_layers)]
    return ["full" if i and i % 4 == 0 else "kda" for i in range(num_layers)]


def _head_dim(cfg: Mapping[str, Any]) -> int:
    if cfg.get("head_dim") is not None:
        return int(cfg["head_dim"])
    return int(_require(cfg, "hidden_size")) // int(_require(cfg, "num_attention_heads"))


def _full_spec(cfg: Mapping[str, Any], dtype_bytes: int) -> LayerSpec:
    if cfg.get("kv_lora_rank") is not None:
        return MLASpec(
            kv_lora_rank=int(cfg["kv_lora_rank"]),
            qk_rope_head_dim=int(_require(cfg, "qk_rope_head_dim")),
            dtype_bytes=dtype_bytes,
        )
    num_kv_heads = cfg.get("num_key_value_heads") or _require(cfg, "num_attention_heads")
    v_head_dim = cfg.get("v_head_dim")
    return FullAttentionSpec(
        num_kv_heads=int(num_kv_heads),
        head_dim=_head_dim(cfg),
        dtype_bytes=dtype_bytes,
        v_head_dim=None if v_head_dim is None else int(v_head_dim),
    )


def _sliding_spec(cfg: Mapping[str, Any], dtype_bytes: int) -> FullAttentionSpec:
    window = int(_require(cfg, "sliding_window", "sliding_window_size"))
    if cfg.get("swa_num_key_value_heads") is not None:  # MiMo-V2 keeps separate SWA shapes
        swa_v_head_dim = cfg.get("swa_v_head_dim")
        return FullAttentionSpec(
            num_kv_heads=int(cfg["swa_num_key_value_heads"]),
            head_dim=int(_require(cfg, "swa_head_dim", "head_dim")),
            dtype_bytes=dtype_bytes,
            sliding_window=window,
            v_head_dim=None if swa_v_head_dim is None else int(swa_v_head_dim),
        )
    full = _full_spec(cfg, dtype_bytes)
    if not isinstance(full, FullAttentionSpec):
        raise ConfigFormatError("sliding-window MLA layers are not supported")
    return FullAttentionSpec(
        full.num_kv_heads, full.head_dim, dtype_bytes, sliding_window=window, v_head_dim=None
    )


def _kda_spec(cfg: Mapping[str, Any], dtype_bytes: int, state_bytes: int) -> LinearStateSpec:
    # The checkpoint's linear_attn_config block, else transformers' own names (and defaults).
    lin = cfg.get("linear_attn_config") or {}
    heads = int(lin.get("num_heads", cfg.get("linear_num_heads", 32)))
    head_dim = int(lin.get("head_dim", cfg.get("linear_head_dim", 128)))
    conv_taps = int(lin.get("short_conv_kernel_size", cfg.get("linear_conv_kernel_dim", 4))) - 1
    recurrent = (heads, head_dim, head_dim)  # (H, d_k, d_v)
    conv = (conv_taps, 3 * heads * head_dim)  # the last inputs of the [q | k | v] short conv
    return LinearStateSpec(
        kind="kda",
        parts=(
            StatePart("recurrent", heads * head_dim * head_dim, state_bytes, recurrent),
            StatePart("conv", 3 * heads * head_dim * conv_taps, dtype_bytes, conv),
        ),
    )


def _gdn_spec(cfg: Mapping[str, Any], dtype_bytes: int, state_bytes: int) -> LinearStateSpec:
    k_heads = int(_require(cfg, "linear_num_key_heads"))
    v_heads = int(_require(cfg, "linear_num_value_heads"))
    k_dim = int(_require(cfg, "linear_key_head_dim"))
    v_dim = int(_require(cfg, "linear_value_head_dim"))
    conv_taps = int(cfg.get("linear_conv_kernel_dim", 4)) - 1
    conv_channels = 2 * k_heads * k_dim + v_heads * v_dim  # q, k, v
    return LinearStateSpec(
        kind="gated_deltanet",
        parts=(
            StatePart("recurrent", v_heads * k_dim * v_dim, state_bytes),  # (H_v, d_k, d_v)
            StatePart("conv", conv_channels * conv_taps, dtype_bytes),
        ),
    )


def _lightning_spec(cfg: Mapping[str, Any], state_bytes: int) -> LinearStateSpec:
    heads = int(_require(cfg, "linear_num_attention_heads", "num_attention_heads"))
    head_dim = int(cfg.get("linear_head_dim") or _head_dim(cfg))
    return LinearStateSpec(
        kind="lightning",
        parts=(StatePart("recurrent", heads * head_dim * head_dim, state_bytes),),
    )


def _mamba2_spec(cfg: Mapping[str, Any], dtype_bytes: int, state_bytes: int) -> LinearStateSpec:
    heads = int(_require(cfg, "mamba_num_heads", "mamba_n_heads", "num_heads"))
    head_dim = int(_require(cfg, "mamba_head_dim", "mamba_d_head", "head_dim"))
    d_state = int(_require(cfg, "ssm_state_size", "state_size", "mamba_d_state"))
    groups = int(cfg.get("n_groups") or cfg.get("mamba_n_groups") or 1)
    conv_taps = int(cfg.get("conv_kernel") or cfg.get("mamba_d_conv") or 4) - 1
    d_inner = heads * head_dim
    return LinearStateSpec(
        kind="mamba2",
        parts=(
            StatePart("ssm", heads * head_dim * d_state, state_bytes),  # (H, head_dim, d_state)
            StatePart("conv", (d_inner + 2 * groups * d_state) * conv_taps, dtype_bytes),  # x,B,C
        ),
    )
