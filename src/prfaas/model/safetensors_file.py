"""Read a ``.safetensors`` file one tensor at a time, with plain reads (no memory map).

Format: an 8-byte little-endian header length ``N``, ``N`` bytes of JSON ``{name: {"dtype",
"shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the data; offsets are
relative to the end of the header. A memory-mapped reader keeps every page it touched resident
(and counted in the process's RSS) until the file is closed, so loading a whole checkpoint
through it costs a second copy of the weights; reading each tensor into its own buffer and
dropping it once copied into the model keeps the peak at one tensor beyond the model.

Every length is checked against the file before anything is allocated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

MAX_HEADER_BYTES = 100 * 2**20  # the format's own reference reader refuses larger headers

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


class SafetensorsFormatError(ValueError):
    """The file is not a well-formed safetensors file; the message says where."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute file offset of the first byte
    num_bytes: int


def read_header(path: Path) -> list[TensorEntry]:
    """The file's tensors in file order, each checked to lie inside the file."""
    file_bytes = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise SafetensorsFormatError(f"{path}: shorter than the 8-byte header length")
        header_bytes = int.from_bytes(prefix, "little")
        if header_bytes > min(MAX_HEADER_BYTES, file_bytes - 8):
            raise SafetensorsFormatError(f"{path}: header length {header_bytes} out of bounds")
        try:
            header = json.loads(f.read(header_bytes))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsFormatError(f"{path}: header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{path}: header is not a JSON object")
    data_start = 8 + header_bytes
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries.append(_entry(path, name, info, data_start, file_bytes))
    return sorted(entries, key=lambda e: e.begin)


def _entry(path: Path, name: str, info: object, data_start: int, file_bytes: int) -> TensorEntry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise SafetensorsFormatError(f"{where}: entry is not an object")
    dtype = DTYPES.get(str(info.get("dtype")))
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if dtype is None:
        raise SafetensorsFormatError(f"{where}: unknown dtype {info.get('dtype')!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise SafetensorsFormatError(f"{where}: bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= file_bytes - data_start
    ):
        raise SafetensorsFormatError(f"{where}: data_offsets {offsets!r} outside the file")
    num_bytes = offsets[1] - offsets[0]
    if num_bytes != math.prod(shape) * dtype.itemsize:
        raise SafetensorsFormatError(f"{where}: {num_bytes} bytes for shape {shape} {dtype}")
    return TensorEntry(name, dtype, tuple(shape), data_start + offsets[0], num_bytes)


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, CPU tensor) in file order; each tensor owns its memory (no view of the file)."""
    entries = read_header(path)
    with path.open("rb", buffering=0) as f:
        for entry in entries:
            raw = torch.empty(entry.num_bytes, dtype=torch.uint8)
            f.seek(entry.begin)
            view = raw.numpy().data  # a writable memoryview over the tensor's bytes
            done = 0
            while done < entry.num_bytes:
                n = f.readinto(view[done:])
                if not n:
                    raise SafetensorsFormatError(f"{path}: ends inside tensor {entry.name!r}")
                done += n
            yield entry.name, raw.view(entry.dtype).reshape(entry.shape)
