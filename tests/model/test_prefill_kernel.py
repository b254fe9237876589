"""The prefill attention kernel equals the reference path (SDPA per segment) and a float64
reference, on steps built by the runner's ``flatten_step`` over random paged caches: first
chunks and later chunks over a cached prefix, lengths on and off block boundaries, several
segments in one step beside decode rows, GQA groups of 1, 3 and 4, head sizes 64 and 128
(and 32, 48, 80 for the kernel's narrower output tiles), one and several threads.

Tolerance: every output element is a convex combination of V entries (here |v| < ~5), so
the float32 paths differ by their rounding of the scores (dot products of 64-128 terms,
|q.k| scale ~1), of the softmax weights (the kernel's 2^x is within 2e-7 relative) and of
the weighted sums (up to ~700 terms): a few 1e-6 at most. 2e-5 leaves room for that and
still catches a wrong key, mask or row (those move outputs by ~0.1 or more)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from prfaas.engine.runner import flatten_step
from prfaas.engine.scheduler import ScheduledChunk, SchedulerOutput
from prfaas.model import c_kernels, prefill_kernel
from prfaas.model.attention import AttentionMetadata, paged_attention, write_kv

pytestmark = pytest.mark.skipif(
    prefill_kernel.load() is None, reason="no C compiler: the kernel is not built here"
)

TOL = 2e-5
NUM_BLOCKS = 160


@dataclasses.dataclass
class Step:
    q: torch.Tensor  # (T, H, d), a view into a wider row, as the model has it
    k: torch.Tensor  # (T, Hkv, d)
    v: torch.Tensor
    k_cache: torch.Tensor  # (NUM_BLOCKS * block_size, Hkv, d)
    v_cache: torch.Tensor
    meta: AttentionMetadata
    chunks: list[tuple[int, int]]  # (start, num_tokens) of each chunk, in row order
    scale: float


def _step(
    rng: random.Random,
    chunks: list[tuple[int, int]],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
) -> Step:
    """A step of the given chunks (``(start, 1)`` with start > 0 is a decode row), each
    request on random blocks, the cached prefix random, the step's K/V written as the model
    writes it."""
    blocks = list(range(NUM_BLOCKS))
    rng.shuffle(blocks)
    scheduled = []
    for i, (start, n) in enumerate(chunks):
        need = -(-(start + n) // block_size) + rng.randint(0, 1)  # may hold one spare block
        table, blocks = blocks[:need], blocks[need:]
        scheduled.append(ScheduledChunk(f"r{i}", [0] * n, start, table, sample=True))
    _, _, meta, _ = flatten_step(SchedulerOutput(scheduled), block_size, torch.device("cpu"))
    num_rows = sum(n for _, n in chunks)
    k_cache = torch.randn(NUM_BLOCKS * block_size, num_kv_heads, head_dim)
    v_cache = torch.randn(NUM_BLOCKS * block_size, num_kv_heads, head_dim)
    qkv = torch.randn(num_rows, num_heads + 2 * num_kv_heads, head_dim)
    q, k, v = qkv[:, :num_heads], qkv[:, num_heads:-num_kv_heads], qkv[:, -num_kv_heads:]
    write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
    return Step(q, k, v, k_cache, v_cache, meta, chunks, head_dim**-0.5)


def _reference(step: Step) -> torch.Tensor:
    """The same step on the reference path (no prefill tables: SDPA per segment)."""
    meta = dataclasses.replace(step.meta, prefill_spans=None, prefill_tables=None)
    s = step
    return paged_attention(s.q, s.k, s.v, s.k_cache, s.v_cache, meta, s.scale)


def _ours(step: Step, threads: int = 1) -> torch.Tensor:
    s = step
    assert s.meta.prefill_tables is not None and prefill_kernel.usable(s.q, s.k_cache)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return paged_attention(s.q, s.k, s.v, s.k_cache, s.v_cache, s.meta, s.scale)
    finally:
        torch.set_num_threads(old)


def _float64(step: Step) -> torch.Tensor:
    """Prefill rows by the definition, in float64 (other rows zero)."""
    s, meta = step, step.meta
    assert meta.prefill_spans is not None and meta.prefill_tables is not None
    group = s.q.shape[1] // s.k_cache.shape[1]
    out = torch.zeros(s.q.shape, dtype=torch.float64)
    for (first, end, start), table in zip(
        meta.prefill_spans.tolist(), meta.prefill_tables, strict=True
    ):
        ctx = start + end - first
        pos = torch.arange(ctx)
        slots = table[pos // meta.block_size] * meta.block_size + pos % meta.block_size
        k = s.k_cache[slots].double().repeat_interleave(group, 1)  # (ctx, H, d)
        v = s.v_cache[slots].double().repeat_interleave(group, 1)
        scores = torch.einsum("thd,khd->htk", s.q[first:end].double(), k) * s.scale
        future = pos[None, :] > torch.arange(start, ctx)[:, None]  # (n, ctx)
        weights = scores.masked_fill(future, float("-inf")).softmax(-1)
        out[first:end] = torch.einsum("htk,khd->thd", weights, v)
    return out


def _prefill_rows(step: Step) -> torch.Tensor:
    rows, row = [], 0
    for start, n in step.chunks:
        if not (n == 1 and start > 0):
            rows.extend(range(row, row + n))
        row += n
    return torch.tensor(rows, dtype=torch.long)


def _assert_matches(step: Step, threads: int = 1) -> None:
    ours, ref = _ours(step, threads), _reference(step)
    assert (ours - ref).abs().max().item() < TOL  # decode rows included
    rows = _prefill_rows(step)
    exact = _float64(step)[rows]
    assert (ours[rows].double() - exact).abs().max().item() < TOL


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (9, 3), (8, 2)])
def test_first_and_later_chunks_with_decode_rows(
    num_heads: int, num_kv_heads: int, head_dim: int
) -> None:
    """First chunks, chunks after a cached prefix and decode rows in one step."""
    rng = random.Random(num_heads * 1000 + head_dim)
    chunks = [(0, rng.randint(1, 300)), (rng.randint(1, 200), 1), (rng.randint(1, 300), 90)]
    chunks += [(rng.randint(1, 100), 1), (0, 1), (rng.randint(1, 40), rng.randint(2, 70))]
    _assert_matches(_step(rng, chunks, num_heads, num_kv_heads, head_dim, 16))


@pytest.mark.parametrize("block_size", [1, 16])
def test_lengths_on_and_off_block_boundaries(block_size: int) -> None:
    rng = random.Random(block_size)
    for start, n in [(0, 15), (0, 16), (0, 17), (16, 16), (15, 17), (17, 15), (32, 2), (0, 48)]:
        _assert_matches(_step(rng, [(start, n), (start + 3, 1)], 9, 3, 64, block_size))


@pytest.mark.parametrize("seed", range(6))
def test_random_lengths_up_to_600(seed: int) -> None:
    rng = random.Random(seed)
    num_heads, num_kv_heads = rng.choice([(4, 4), (9, 3), (8, 2)])
    chunks = []
    for _ in range(rng.randint(1, 3)):
        start = rng.choice([0, 0, rng.randint(1, 300)])
        chunks.append((start, rng.randint(2 if start else 1, 600 - start)))
    _assert_matches(_step(rng, chunks, num_heads, num_kv_heads, 64, 16))


def test_single_token_prefill_alone() -> None:
    _assert_matches(_step(random.Random(7), [(0, 1)], 9, 3, 64, 16))


@pytest.mark.parametrize("head_dim", [32, 48, 80])
def test_head_sizes_under_64_wide_tiles(head_dim: int) -> None:
    """The output tile is 64 head elements wide; 32, 48 and 80 use the narrower tiles."""
    rng = random.Random(head_dim)
    _assert_matches(_step(rng, [(0, 100), (50, 30), (60, 1)], 6, 2, head_dim, 16))


def test_threads_give_the_same_bits() -> None:
    """A tile's sums run in the same order on any thread: 1 and 3 threads agree exactly
    (the step is large enough that the kernel starts threads)."""
    step = _step(random.Random(3), [(0, 600), (100, 250), (200, 1)], 9, 3, 64, 16)
    assert torch.equal(_ours(step, 1), _ours(step, 3))
    _assert_matches(step, threads=2)


def _built_file() -> str:
    lib = prefill_kernel.load()
    assert lib is not None
    return str(lib._name)


def test_posix_threads_give_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the compiler has no OpenMP the kernel is built without it and runs POSIX threads
    of its own: the same output."""
    step = _step(random.Random(4), [(0, 500), (30, 200)], 9, 3, 64, 16)
    with_openmp, openmp_build = _ours(step, 2), _built_file()
    monkeypatch.setattr(c_kernels, "OPENMP", ("-fno-such-option",))  # that build fails
    prefill_kernel.load.cache_clear()
    try:
        assert torch.equal(_ours(step, 2), with_openmp)
        assert _built_file() != openmp_build
    finally:
        prefill_kernel.load.cache_clear()


def test_other_head_sizes_take_the_reference_path() -> None:
    step = _step(random.Random(5), [(0, 20)], 4, 2, 40, 16)
    assert not prefill_kernel.usable(step.q, step.k_cache)
    s = step
    ours = paged_attention(s.q, s.k, s.v, s.k_cache, s.v_cache, s.meta, s.scale)
    assert torch.equal(ours, _reference(step))


def test_metadata_that_does_not_fit_is_refused() -> None:
    step = _step(random.Random(11), [(0, 40), (8, 8)], 9, 3, 64, 16)
    s, meta = step, step.meta
    assert meta.prefill_spans is not None and meta.prefill_tables is not None
    out = torch.empty_like(s.q)

    def call(spans: torch.Tensor, tables: torch.Tensor) -> None:
        prefill_kernel.prefill_attention(
            s.q, s.k_cache, s.v_cache, out, spans, tables, meta.block_size, s.scale
        )

    bad_block = meta.prefill_tables.clone()
    bad_block[1, 0] = NUM_BLOCKS
    with pytest.raises(ValueError, match="not a block"):
        call(meta.prefill_spans, bad_block)
    past_q = meta.prefill_spans.clone()
    past_q[1, 1] = s.q.shape[0] + 1
    with pytest.raises(ValueError, match="span falls outside"):
        call(past_q, meta.prefill_tables)
    past_table = meta.prefill_spans.clone()
    past_table[0, 2] = meta.prefill_tables.shape[1] * meta.block_size
    with pytest.raises(ValueError, match="span falls outside"):
        call(past_table, meta.prefill_tables)
    with pytest.raises(ValueError, match="int64"):
        call(meta.prefill_spans.int(), meta.prefill_tables)
