"""Rebuild an engine KV payload from a landed transfer (see ``prefill/kv_export.py``).

The wire layers must be exactly this model's tensor names (``tensor_names(layout)``) plus
the first token, each of the kind its name implies; the engine's ``KvPayload.validate`` then
checks shapes and dtypes against the model. The tensors are copies: the receiver reuses its
buffers once released.
"""

from __future__ import annotations

import numpy as np
import torch

from prfaas.engine.handoff import KvImportError, KvPayload, LayerLayout, tensor_names
from prfaas.messages import KV_FIRST_TOKEN_LAYER
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
    if len(entries) != len(expected) + 1:
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
    meta, first = entries[-1], arrays[-1]
    if meta.name != KV_FIRST_TOKEN_LAYER or meta.dtype is not DType.INT64 or meta.shape != (1,):
        raise KvImportError("transfer lacks the first token")
    dtype = str(WIRE_TO_TORCH[kv_dtype or DType.FLOAT32]).removeprefix("torch.")
    return KvPayload.from_named_tensors(
        received.header.fingerprint.hex(),
        list(prompt_token_ids),
        int(first[0]),
        dtype,
        list(layout),
        tensors,
    )
