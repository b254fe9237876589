"""Decode attention read straight from the paged KV cache: a small C kernel for CPU float32.

The reference path (``attention.paged_attention``) gathers each decode row's whole context
into a contiguous tensor every step and runs SDPA on it: per layer it writes and reads the
context once more than attention itself needs (~60% of a batched decode step on 2 cores).
This kernel walks each row's block table instead and reads every K and V row once, in place.

It is C built at first use by ``c_kernels.build`` (the system C compiler, cached per source,
flags and CPU; called through ctypes, which releases the GIL). Where there is no compiler,
``load()`` is None; there, or where the device or dtype is not CPU float32, the reference
path runs. ``tests/model/test_decode_kernel.py`` holds it to that path.

Per (decode row, KV head): the row's ``g = num_heads / num_kv_heads`` query heads score
the row's ``len`` context tokens (one pass over K), softmax, then one pass over V.
Rows and heads are split over ``num_threads`` threads (``c_kernels.run_jobs``: torch's OpenMP
threads), balanced by context length.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from prfaas.model import c_kernels

_SOURCE = r"""
typedef struct {
    const float *q;          /* (T, num_heads, head_dim), rows q_stride floats apart */
    const float *k, *v;      /* (num_slots, num_kv_heads, head_dim), contiguous */
    float *out;              /* (T, num_heads, head_dim), rows out_stride floats apart */
    const int64_t *rows;     /* (D,) step rows of the decode tokens */
    const int64_t *tables;   /* (D, width) block ids */
    const int64_t *lens;     /* (D,) context length of each row, its new token included */
    int64_t width, block_size, num_heads, num_kv_heads, head_dim, q_stride, out_stride;
    int64_t max_len;
    float scale;
    int64_t task_begin, task_end; /* decode rows [begin, end) of this thread */
} Job;

typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

/* A tree of halves: 4 dependent adds, not 15 (the compiler keeps the written order). */
static inline float hsum16(v16 x) {
    v8 a, b;
    __builtin_memcpy(&a, &x, sizeof(a));
    __builtin_memcpy(&b, (const char *)&x + sizeof(a), sizeof(b));
    a += b;
    v4 c, e;
    __builtin_memcpy(&c, &a, sizeof(c));
    __builtin_memcpy(&e, (const char *)&a + sizeof(c), sizeof(e));
    c += e;
    return (c[0] + c[2]) + (c[1] + c[3]);
}

static float dot(const float *a, const float *b, int64_t n) {
    v16 acc = {0};
    int64_t t = 0;
    for (; t + 16 <= n; t += 16) acc += load16(a + t) * load16(b + t);
    float s = hsum16(acc);
    for (; t < n; t++) s += a[t] * b[t];
    return s;
}

static void *run(void *arg) {
    const Job *j = (const Job *)arg;
    const int64_t nh = j->num_heads, g = nh / j->num_kv_heads, d = j->head_dim;
    const int64_t kv_stride = j->num_kv_heads * d, bs = j->block_size;
    /* (num_heads, len) scores, then (num_heads, head_dim) output sums */
    float *scores = malloc(sizeof(float) * (size_t)(nh * j->max_len + nh * d));
    if (!scores) return (void *)1;
    float *acc = scores + nh * j->max_len;
    for (int64_t r = j->task_begin; r < j->task_end; r++) {
        const int64_t len = j->lens[r], row = j->rows[r];
        const int64_t *table = j->tables + r * j->width;
        const float *q = j->q + row * j->q_stride;
        /* One pass over the row's K: each token's (num_kv_heads, head_dim) row is read once. */
        for (int64_t t = 0; t < len; t++) {
            const float *kt = j->k + (table[t / bs] * bs + t % bs) * kv_stride;
            for (int64_t h = 0; h < nh; h++)
                scores[h * len + t] = dot(q + h * d, kt + (h / g) * d, d) * j->scale;
        }
        for (int64_t h = 0; h < nh; h++) {
            float *s = scores + h * len, m = s[0], sum = 0.0f;
            for (int64_t t = 1; t < len; t++) m = s[t] > m ? s[t] : m;
            for (int64_t t = 0; t < len; t++) {
                s[t] = expf(s[t] - m);
                sum += s[t];
            }
            const float inv = 1.0f / sum;
            for (int64_t t = 0; t < len; t++) s[t] *= inv;
        }
        for (int64_t x = 0; x < nh * d; x++) acc[x] = 0.0f;
        /* One pass over V, the same way. */
        for (int64_t t = 0; t < len; t++) {
            const float *vt = j->v + (table[t / bs] * bs + t % bs) * kv_stride;
            for (int64_t h = 0; h < nh; h++) {
                const float p = scores[h * len + t], *vh = vt + (h / g) * d;
                float *a = acc + h * d;
                for (int64_t x = 0; x < d; x++) a[x] += p * vh[x];
            }
        }
        float *o = j->out + row * j->out_stride;
        for (int64_t x = 0; x < nh * d; x++) o[x] = acc[x];
    }
    free(scores);
    return 0;
}

/* Returns 0, or 1 when memory for the scores ran out (nothing is then trusted). */
int decode_attention(const float *q, const float *k, const float *v, float *out,
                     const int64_t *rows, const int64_t *tables, const int64_t *lens,
                     int64_t num_rows, int64_t width, int64_t block_size, int64_t num_heads,
                     int64_t num_kv_heads, int64_t head_dim, int64_t q_stride,
                     int64_t out_stride, float scale, int64_t num_threads) {
    enum { MAX_THREADS = 64 };
    Job jobs[MAX_THREADS];
    int64_t total = 0, max_len = 1;
    for (int64_t r = 0; r < num_rows; r++) {
        total += lens[r];
        max_len = lens[r] > max_len ? lens[r] : max_len;
    }
    /* Threads only where the work outweighs starting them (~2K context tokens). */
    if (num_threads > MAX_THREADS) num_threads = MAX_THREADS;
    if (num_threads < 1 || total < 2048) num_threads = 1;
    int64_t begin = 0, done = 0;
    for (int64_t n = 0; n < num_threads; n++) {
        /* Cut after the row that passes this thread's share of the context tokens. */
        const int64_t goal = total * (n + 1) / num_threads;
        int64_t end = begin;
        while (end < num_rows && (done < goal || n == num_threads - 1)) done += lens[end++];
        jobs[n] = (Job){q, k, v, out, rows, tables, lens, width, block_size, num_heads,
                        num_kv_heads, head_dim, q_stride, out_stride, max_len, scale, begin, end};
        begin = end;
    }
    return run_jobs(run, jobs, sizeof(Job), num_threads);
}
"""


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernel, or None without a C compiler."""
    lib = c_kernels.build("decode_attention", _SOURCE)
    if lib is None:
        return None
    fn = lib.decode_attention
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 8 + [ctypes.c_float, ctypes.c_int64]
    return lib


def usable(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether the kernel serves this layer: CPU float32 query and cache (contiguous cache,
    query rows with a unit stride inside). The metadata must carry block tables."""
    return (
        q.device.type == "cpu"
        and q.dtype == k_cache.dtype == torch.float32
        and k_cache.is_contiguous()
        and q.stride(2) == 1
        and q.stride(1) == q.shape[2]
        and load() is not None
    )


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    rows: torch.Tensor,
    tables: torch.Tensor,
    lens: torch.Tensor,
    block_size: int,
    scale: float,
) -> None:
    """Write decode rows of ``out`` (T, num_heads, head_dim; contiguous) from q (T, num_heads,
    head_dim), the paged caches (num_slots, num_kv_heads, head_dim), ``rows`` (D,), block
    ``tables`` (D, width) and context ``lens`` (D,), all int64 CPU tensors; ``usable`` first.
    Every block id of a row's first ``cdiv(len, block_size)`` table entries must be a block
    of the cache (the runner's tables are; nothing else calls this)."""
    lib = load()
    assert lib is not None and out.is_contiguous()
    for t in (rows, tables, lens):
        assert t.dtype == torch.int64 and t.is_contiguous() and t.device.type == "cpu"
    num_heads, head_dim = q.shape[1], q.shape[2]
    failed = lib.decode_attention(
        q.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        out.data_ptr(),
        rows.data_ptr(),
        tables.data_ptr(),
        lens.data_ptr(),
        rows.shape[0],
        tables.shape[1],
        block_size,
        num_heads,
        k_cache.shape[1],
        head_dim,
        q.stride(0),
        out.stride(0),
        scale,
        torch.get_num_threads(),
    )
    if failed:
        raise MemoryError("decode attention kernel: no memory for the scores")
