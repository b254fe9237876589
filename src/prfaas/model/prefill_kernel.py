"""Causal prefill attention read straight from the paged KV cache: a C kernel for CPU float32.

The reference path (``attention.paged_attention``) runs SDPA per prefill segment: it first
copies each KV head once per query head of its group (SDPA's grouped-query mode falls back
to the math kernel on a CPU), and PyTorch's CPU flash kernel computes the masked half of
every diagonal block it visits (256 queries x 512 keys). This kernel takes every prefill
segment of the step in one call and skips masked work at the grain of 8 keys.

Built at first use by ``c_kernels.build``; where there is no compiler ``load()`` is None, and
there, or off CPU float32, or for a head size that is not a multiple of 16, the reference
path runs. ``tests/model/test_prefill_kernel.py`` holds it to that path.

The work, per (segment, KV head):

- **Rows.** The ``g = num_heads / num_kv_heads`` query heads sharing the KV head are folded
  into the query axis: folded row ``r`` is token ``r // g``, query head ``r % g`` of the
  group, so no K or V is copied per query head. Rows go in tiles of R = 48 (any ``g``; a
  tile may straddle tokens: each row has its own position).
- **Keys.** Read in chunks of KC keys, gathered from their blocks into contiguous (keys,
  head_dim) buffers once per chunk and tile group, then in blocks of BK keys per tile; a tile
  reads keys ``[0, its last position]`` only, and only the 8-key steps that cross a row's
  position are masked element-wise.
- **Micro-kernels.** Scores are computed transposed, ``S^T`` (keys, rows), a register tile of
  8 keys x 48 rows (a broadcast key element times a vector of 16 rows' query elements), so
  the softmax's row max and sum are vertical vector operations; ``O += P V`` is a register
  tile of 6 rows x 64 head elements (a broadcast probability times a vector of V).
- **Softmax.** Online, in base 2 (``exp(scale s) = 2^(scale log2(e) s)``): per row a running
  max and sum; a fast vectorized ``2^x`` (within 2e-7 relative).
- **Threads.** Tiles, in (segment, KV head, tile) order, are cut into ``num_threads``
  contiguous runs of equal work (a tile's work is the keys it reads), run on torch's OpenMP
  threads (``c_kernels.run_jobs``); one thread only when the whole call is too small to pay
  for waking threads. A tile's sums run in the same order on any thread: the output does
  not depend on the thread count.
- **Memory.** Each thread's scratch depends on the head size only (about 1.3 MB at 64, 2.7 MB
  at 128), not on the lengths: one tile group's queries and outputs, one chunk of keys and
  values.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from prfaas.model import c_kernels
from prfaas.model.prefill_kernel_source import SOURCE


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernel, or None without a C compiler."""
    lib = c_kernels.build("prefill_attention", SOURCE)
    if lib is None:
        return None
    fn = lib.prefill_attention
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 8 + [ctypes.c_float]
    fn.argtypes += [ctypes.c_int64] * 3
    return lib


def usable(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether the kernel serves this layer: CPU float32 query and cache (contiguous cache,
    query rows with a unit stride inside), a head size that is a multiple of 16 and query
    heads in whole groups per KV head. The metadata must carry the prefill tables."""
    head_dim = q.shape[2]
    return (
        q.device.type == "cpu"
        and q.dtype == k_cache.dtype == torch.float32
        and k_cache.is_contiguous()
        and q.stride(2) == 1
        and q.stride(1) == head_dim
        and head_dim % 16 == 0
        and k_cache.shape[2] == head_dim
        and q.shape[1] % k_cache.shape[1] == 0
        and load() is not None
    )


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    spans: torch.Tensor,
    tables: torch.Tensor,
    block_size: int,
    scale: float,
) -> None:
    """Write the prefill rows of ``out`` (T, num_heads, head_dim; contiguous) from q (T,
    num_heads, head_dim), the paged caches (num_slots, num_kv_heads, head_dim), the segments'
    ``spans`` (S, 3): first row, end row, position of the first row (query ``i`` of a segment
    attends its positions ``[0, start + i]``), and block ``tables`` (S, width): CPU int64.
    ``usable`` first. Raises ValueError for metadata that does not fit the tensors: shapes and
    types here; the spans' and tables' values in C, before anything is read (here they would
    be host reads of the step's tensors, which a step makes for the sampled ids only)."""
    lib = load()
    assert lib is not None
    _check(q, k_cache, v_cache, out, spans, tables, block_size, scale)
    failed = lib.prefill_attention(
        q.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        out.data_ptr(),
        spans.data_ptr(),
        tables.data_ptr(),
        spans.shape[0],
        tables.shape[1],
        block_size,
        q.shape[1],
        k_cache.shape[1],
        q.shape[2],
        q.stride(0),
        out.stride(0),
        scale,
        torch.get_num_threads(),
        q.shape[0],
        k_cache.shape[0] // block_size,
    )
    if failed == 1:
        raise MemoryError("prefill attention kernel: no memory for its scratch")
    if failed == 2:
        raise ValueError("prefill attention kernel: a span falls outside q or its table")
    if failed == 3:
        raise ValueError("prefill attention kernel: a table entry is not a block of the cache")


def _check(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    spans: torch.Tensor,
    tables: torch.Tensor,
    block_size: int,
    scale: float,
) -> None:
    """The shapes, types and layouts the C code trusts (it checks the values itself)."""
    if not usable(q, k_cache):
        raise ValueError("prefill attention kernel: q and the cache do not fit (see usable)")
    if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype:
        raise ValueError("prefill attention kernel: K and V caches differ")
    if not v_cache.is_contiguous() or not out.is_contiguous() or out.shape != q.shape:
        raise ValueError("prefill attention kernel: out must be contiguous, shaped as q")
    if out.dtype != torch.float32 or out.device.type != "cpu":
        raise ValueError("prefill attention kernel: out must be CPU float32")
    for name, t, cols in (("spans", spans, 3), ("tables", tables, None)):
        if t.dtype != torch.int64 or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"prefill attention kernel: {name} must be contiguous CPU int64")
        if t.dim() != 2 or t.shape[0] != spans.shape[0] or cols not in (None, t.shape[1]):
            raise ValueError(f"prefill attention kernel: {name} has shape {tuple(t.shape)}")
    if spans.shape[0] == 0 or tables.shape[1] == 0 or block_size <= 0 or not scale > 0:
        raise ValueError("prefill attention kernel: no segment, block or scale")
