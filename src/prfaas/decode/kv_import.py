"""Rebuild an engine KV payload from a landed transfer (see ``prefill/kv_export.py``).

The wire layers must be exactly this model's tensor names (``tensor_names(layout)``) plus
the first token (and, when the request asked for them, its logprobs and the prompt's: pairs
of layers named in ``messages``), each of the kind its name implies. A prefill side that does
not send the first token (vLLM's: it streams the KV before it samples) sends the tensors
alone; the engine then computes the last prompt token itself (``Engine.land_kv``). The engine's
``KvPayload.validate`` then checks shapes and dtypes against the model. The tensors are
copies: the receiver reuses its buffers once released.
"""

from __future__ import annotations

import numpy as np
import torch

from prfaas.engine.handoff import KvImportError, KvPayload, LayerLayout, tensor_names
from prfaas.engine.logprobs import TokenLogprobs
from prfaas.messages import KV_FIRST_LOGPROBS_LAYER, KV_FIRST_TOKEN_LAYER, KV_PROMPT_LOGPROBS_LAYER
from prfaas.sampling import logprobs_of_rows
from prfaas.transfer.messages import DType, LayerKind
from prfaas.transfer.receiver import ReceivedTransfer

WIRE_TO_TORCH = {
    DType.FLOAT32: torch.float32,
    DType.FLOAT16: torch.float16,
    DType.BFLOAT16: torch.bfloat16,
}


def _as_torch(array: np.ndarray, dtype: DType) -> torch.Tensor:
    if dtype is DType.BFLOAT16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


def check_prompt(received: ReceivedTransfer, expected_hash: bytes) -> None:
    """Refuse KV computed for another prompt (or model, or tenant): the header's prompt
    hash must equal this side's own ``prompt_hash`` of the prompt it reserved for."""
    if received.header.prompt_hash != expected_hash:
        raise KvImportError("the transfer carries KV for another prompt; refused")


def wire_to_payload(
    received: ReceivedTransfer, prompt_token_ids: list[int], layout: list[LayerLayout]
) -> KvPayload:
    entries, arrays = received.header.layers, received.layers
    expected = tensor_names(layout)
    first_at = len(expected)  # the first token's layer; logprob layers may follow it
    if len(entries) not in (first_at, first_at + 1, first_at + 3, first_at + 5):
        raise KvImportError(
            f"transfer has {len(entries)} wire layers, expected {len(expected) + 1}"
        )
    tensors: dict[str, torch.Tensor] = {}
    kv_dtype: DType | None = None
    for (name, per_token), entry, array in zip(expected, entries, arrays, strict=False):
        kind = LayerKind.BLOCKS if per_token else LayerKind.STATE
        if entry.name != name or entry.kind is not kind or entry.dtype not in WIRE_TO_TORCH:
            raise KvImportError(
                f"unexpected wire layer {entry.name!r} ({entry.kind.name}, "
                f"{entry.dtype.name}); expected {name!r}"
            )
        if per_token:
            kv_dtype = kv_dtype or entry.dtype
        tensors[name] = _as_torch(array, entry.dtype)
    first_token_id: int | None = None
    if len(entries) > first_at:
        meta, first = entries[first_at], arrays[first_at]
        if meta.name != KV_FIRST_TOKEN_LAYER or meta.dtype is not DType.INT64 or meta.shape != (1,):
            raise KvImportError(f"unexpected wire layer {meta.name!r} after the KV")
        first_token_id = int(first[0])
    logprobs = _logprobs(received, first_at + 1, len(prompt_token_ids))
    dtype = str(WIRE_TO_TORCH[kv_dtype or DType.FLOAT32]).removeprefix("torch.")
    payload = KvPayload.from_named_tensors(
        received.header.fingerprint.hex(),
        list(prompt_token_ids),
        first_token_id,
        dtype,
        list(layout),
        tensors,
    )
    first_logprobs = logprobs.get(KV_FIRST_LOGPROBS_LAYER)
    payload.first_logprobs = None if first_logprobs is None else first_logprobs[0]
    payload.prompt_logprobs = logprobs.get(KV_PROMPT_LOGPROBS_LAYER)
    return payload


def _logprobs(
    received: ReceivedTransfer, start: int, num_tokens: int
) -> dict[str, list[TokenLogprobs | None]]:
    """The logprob layer pairs from wire layer ``start`` on, by name."""
    entries, arrays = received.header.layers, received.layers
    rows = {KV_FIRST_LOGPROBS_LAYER: 1, KV_PROMPT_LOGPROBS_LAYER: num_tokens}
    out: dict[str, list[TokenLogprobs | None]] = {}
    for i in range(start, len(entries), 2):
        values, ids = entries[i], entries[i + 1]
        name = values.name.removesuffix(".logprobs")
        if (
            name not in rows
            or name in out
            or values.name != f"{name}.logprobs"
            or ids.name != f"{name}.ids"
            or values.dtype is not DType.FLOAT32
            or ids.dtype is not DType.INT64
            or len(values.shape) != 2
            or values.shape[0] != rows[name]
        ):
            raise KvImportError(f"unexpected wire layers {values.name!r}, {ids.name!r}")
        try:
            out[name] = logprobs_of_rows(arrays[i], arrays[i + 1])
        except ValueError as e:
            raise KvImportError(str(e)) from None
    return out
