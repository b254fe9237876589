"""Turn an engine's KV payload into a transfer: a header plus one array per wire layer.

Wire layers, in order: the payload's named tensors (``KvPayload.named_tensors``: ``L{i}.k``
and ``L{i}.v`` for full attention, ``L{i}.latent`` for MLA, ``L{i}.recurrent`` and
``L{i}.conv`` for linear attention), per-token tensors as BLOCKS (one token per row, so any
token range is a whole number of rows) and fixed-size states as STATE; then ``first_token``
(STATE, one int64); then, when the request asked for them, the first token's and the
prompt's logprobs (STATE, ``messages.KV_FIRST_LOGPROBS_LAYER``), computed here and streamed
by the decode side. The receiver rebuilds the payload from the prompt it already has and
these arrays (``decode/kv_import.py``).

``stream_header`` declares the same header before any KV exists (from the prompt length and
the model's layout), for a transfer streamed layer by layer while prefill runs
(``prefill/layer_stream.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from prfaas.engine.handoff import FULL_ATTENTION, KDA, KvPayload, LayerLayout
from prfaas.engine.logprobs import TokenLogprobs
from prfaas.messages import (
    KV_FIRST_LOGPROBS_LAYER,
    KV_FIRST_TOKEN_LAYER,
    KV_PROMPT_LOGPROBS_LAYER,
    MAX_LOGPROBS,
)
from prfaas.sampling import logprob_rows
from prfaas.transfer.messages import DType, LayerEntry, LayerKind, TransferHeader

TORCH_TO_WIRE = {
    torch.float32: DType.FLOAT32,
    torch.float16: DType.FLOAT16,
    torch.bfloat16: DType.BFLOAT16,
}


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy (or view of a CPU copy) of ``t``; bfloat16 as its raw uint16 bits."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)  # raw 16-bit pattern
    return t.numpy()


def payload_to_wire(
    payload: KvPayload, request_id: str, codec: str, prompt_hash: bytes
) -> tuple[TransferHeader, list[np.ndarray]]:
    """``prompt_hash``: ``kvcache.hashing.prompt_hash`` of the payload's prompt under its
    model and tenant."""
    entries: list[LayerEntry] = []
    arrays: list[np.ndarray] = []
    for name, per_token, t in payload.named_tensors():
        kind = LayerKind.BLOCKS if per_token else LayerKind.STATE
        entries.append(LayerEntry(name, kind, TORCH_TO_WIRE[t.dtype], tuple(t.shape)))
        arrays.append(as_numpy(t))
    if payload.first_token_id is not None:
        entries.append(LayerEntry(KV_FIRST_TOKEN_LAYER, LayerKind.STATE, DType.INT64, (1,)))
        arrays.append(first_token_array(payload.first_token_id))
    extra = logprob_arrays(
        payload.first_logprobs,
        payload.prompt_logprobs,
        payload.num_tokens,
        _num_top([payload.first_logprobs]),
        _num_top(payload.prompt_logprobs),
    )
    for name, array in extra:
        entries.append(LayerEntry(name, LayerKind.STATE, _WIRE_OF[array.dtype], array.shape))
        arrays.append(array)
    header = TransferHeader(
        request_id=request_id,
        fingerprint=bytes.fromhex(payload.model_fingerprint),
        codec=codec,
        layers=tuple(entries),
        prompt_hash=prompt_hash,
    )
    return header, arrays


def stream_header(
    layout: list[LayerLayout],
    fingerprint: str,
    dtype: torch.dtype,
    num_tokens: int,
    request_id: str,
    codec: str,
    prompt_hash: bytes,
    *,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
) -> TransferHeader:
    """The header ``payload_to_wire`` would build for a ``num_tokens`` prompt, before the KV
    exists: per-token tensors (num_tokens, heads, dim) or (num_tokens, dim) in the KV dtype,
    KDA states recurrent float32 and conv in the KV dtype, then the first token, then the
    logprobs the request asked for (``logprobs``/``prompt_logprobs`` alternatives)."""
    wire = TORCH_TO_WIRE[dtype]
    entries: list[LayerEntry] = []
    for entry in layout:
        at = f"L{entry.layer_index}."
        if entry.kind == FULL_ATTENTION:
            shape = (num_tokens, entry.num_kv_heads, entry.head_dim)
            entries += [LayerEntry(at + p, LayerKind.BLOCKS, wire, shape) for p in ("k", "v")]
        elif entry.kind == KDA:
            recurrent, conv = entry.state_shapes()
            entries.append(LayerEntry(at + "recurrent", LayerKind.STATE, DType.FLOAT32, recurrent))
            entries.append(LayerEntry(at + "conv", LayerKind.STATE, wire, conv))
        else:  # MLA
            rows = (num_tokens, entry.head_dim)
            entries.append(LayerEntry(at + "latent", LayerKind.BLOCKS, wire, rows))
    entries += side_layers(num_tokens, logprobs, prompt_logprobs)
    return TransferHeader(
        request_id=request_id,
        fingerprint=bytes.fromhex(fingerprint),
        codec=codec,
        layers=tuple(entries),
        prompt_hash=prompt_hash,
    )


def side_layers(
    num_tokens: int, logprobs: int | None, prompt_logprobs: int | None
) -> list[LayerEntry]:
    """The wire layers after the KV of a ``num_tokens`` prompt: the first token, then the
    logprob pairs the request asked for (``logprobs``/``prompt_logprobs`` alternatives per
    position; None: no pair). ``logprob_arrays`` fills the pairs."""
    entries = [LayerEntry(KV_FIRST_TOKEN_LAYER, LayerKind.STATE, DType.INT64, (1,))]
    for name, num_rows, k in (
        (KV_FIRST_LOGPROBS_LAYER, 1, logprobs),
        (KV_PROMPT_LOGPROBS_LAYER, num_tokens, prompt_logprobs),
    ):
        if k is not None:
            entries.append(
                LayerEntry(f"{name}.logprobs", LayerKind.STATE, DType.FLOAT32, (num_rows, 1 + k))
            )
            entries.append(
                LayerEntry(f"{name}.ids", LayerKind.STATE, DType.INT64, (num_rows, 2 + k))
            )
    return entries


def max_side_bytes(num_tokens: int) -> int:
    """The most bytes the layers after the KV take for a ``num_tokens`` prompt: both logprob
    pairs at the largest number of alternatives a request may ask for. Affine in
    ``num_tokens`` (the prompt logprobs are one row per prompt token)."""
    return sum(e.num_bytes for e in side_layers(num_tokens, MAX_LOGPROBS, MAX_LOGPROBS))


def first_token_array(token_id: int) -> np.ndarray:
    """The last wire layer: the first sampled token, one int64."""
    return np.array([token_id], dtype=np.int64)


_WIRE_OF = {np.dtype(np.float32): DType.FLOAT32, np.dtype(np.int64): DType.INT64}


def logprob_arrays(
    first: TokenLogprobs | None,
    prompt: list[TokenLogprobs | None] | None,
    num_tokens: int,
    logprobs: int | None,
    prompt_logprobs: int | None,
) -> list[tuple[str, np.ndarray]]:
    """The logprob wire layers ``stream_header`` declares for these ``logprobs`` and
    ``prompt_logprobs`` (alternatives per position; None: no layer), in header order."""
    out: list[tuple[str, np.ndarray]] = []
    for name, entries, rows, k in (
        (KV_FIRST_LOGPROBS_LAYER, [first], 1, logprobs),
        (KV_PROMPT_LOGPROBS_LAYER, prompt, num_tokens, prompt_logprobs),
    ):
        if k is not None:
            values, ids = logprob_rows(entries or [None] * rows, k)
            out += [(f"{name}.logprobs", values), (f"{name}.ids", ids)]
    return out


def _num_top(entries: list[TokenLogprobs | None] | None) -> int | None:
    if entries is None or all(e is None for e in entries):
        return None
    return max(len(e.top_token_ids) for e in entries if e is not None)
