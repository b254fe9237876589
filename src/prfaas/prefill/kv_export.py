"""Turn an engine's KV payload into a transfer: a header plus one array per wire layer.

Wire layers, in order: the payload's named tensors (``KvPayload.named_tensors``: ``L{i}.k``
and ``L{i}.v`` for full attention, ``L{i}.latent`` for MLA, ``L{i}.recurrent`` and
``L{i}.conv`` for linear attention), per-token tensors as BLOCKS (one token per row, so any
token range is a whole number of rows) and fixed-size states as STATE; then ``first_token``
(STATE, one int64). The receiver rebuilds the payload from the prompt it already has and
these arrays (``decode/kv_import.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from prfaas.engine.handoff import KvPayload
from prfaas.messages import KV_FIRST_TOKEN_LAYER
from prfaas.transfer.messages import DType, LayerEntry, LayerKind, TransferHeader

TORCH_TO_WIRE = {
    torch.float32: DType.FLOAT32,
    torch.float16: DType.FLOAT16,
    torch.bfloat16: DType.BFLOAT16,
}


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)  # raw 16-bit pattern
    return t.numpy()


def payload_to_wire(
    payload: KvPayload, request_id: str, codec: str
) -> tuple[TransferHeader, list[np.ndarray]]:
    entries: list[LayerEntry] = []
    arrays: list[np.ndarray] = []
    for name, per_token, t in payload.named_tensors():
        kind = LayerKind.BLOCKS if per_token else LayerKind.STATE
        entries.append(LayerEntry(name, kind, TORCH_TO_WIRE[t.dtype], tuple(t.shape)))
        arrays.append(_as_numpy(t))
    entries.append(LayerEntry(KV_FIRST_TOKEN_LAYER, LayerKind.STATE, DType.INT64, (1,)))
    arrays.append(np.array([payload.first_token_id], dtype=np.int64))
    header = TransferHeader(
        request_id=request_id,
        fingerprint=bytes.fromhex(payload.model_fingerprint),
        codec=codec,
        layers=tuple(entries),
    )
    return header, arrays
