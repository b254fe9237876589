"""Rebuild an engine KV payload from a landed transfer (see ``prefill/kv_export.py``).

Everything is checked against what this worker expects (names, kinds, dtypes, shapes);
the engine's own ``KvPayload.validate`` then checks the payload against the model.
"""

from __future__ import annotations

import numpy as np
import torch

from prfaas.engine.handoff import KvImportError, KvPayload, LayerLayout
from prfaas.transfer.messages import DType, LayerKind
from prfaas.transfer.receiver import ReceivedTransfer

WIRE_TO_TORCH = {
    DType.FLOAT32: torch.float32,
    DType.FLOAT16: torch.float16,
    DType.BFLOAT16: torch.bfloat16,
}


def _as_torch(array: np.ndarray, dtype: DType) -> torch.Tensor:
    if dtype is DType.BFLOAT16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def wire_to_payload(
    received: ReceivedTransfer, prompt_token_ids: list[int], layout: list[LayerLayout]
) -> KvPayload:
    entries, arrays = received.header.layers, received.layers
    if len(entries) != 2 * len(layout) + 1:
        raise KvImportError(
            f"transfer has {len(entries)} wire layers, expected {2 * len(layout) + 1}"
        )
    kv: list[tuple[torch.Tensor, torch.Tensor]] = []
    dtype: DType | None = None
    for i, layer in enumerate(layout):
        pair = []
        for j, name in enumerate(("k", "v")):
            entry, array = entries[2 * i + j], arrays[2 * i + j]
            if entry.name != f"L{layer.layer_index}.{name}" or entry.kind is not LayerKind.BLOCKS:
                raise KvImportError(f"unexpected wire layer {entry.name!r}")
            if entry.dtype not in WIRE_TO_TORCH or (dtype is not None and entry.dtype != dtype):
                raise KvImportError(f"wire layer {entry.name!r} has dtype {entry.dtype.name}")
            dtype = entry.dtype
            pair.append(_as_torch(array, entry.dtype))
        kv.append((pair[0], pair[1]))
    meta, first = entries[-1], arrays[-1]
    if meta.name != "first_token" or meta.dtype is not DType.INT64 or meta.shape != (1,):
        raise KvImportError("transfer lacks the first token")
    return KvPayload(
        model_fingerprint=received.header.fingerprint.hex(),
        token_ids=list(prompt_token_ids),
        first_token_id=int(first[0]),
        dtype=str(WIRE_TO_TORCH[dtype or DType.FLOAT32]).removeprefix("torch."),
        layout=list(layout),
        kv=kv,
    )
