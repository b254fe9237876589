"""The C text of the prefill attention kernel (``model/prefill_kernel.py`` says what it does
and holds its Python side: the gate, the checks, the call). Kept apart because it is most
of the kernel's lines; ``c_kernels.build`` prepends ``c_kernels.PRELUDE``."""

SOURCE = r"""
#define RV 3              /* vectors of 16 rows in a tile */
#define R (16 * RV)       /* folded query rows per tile */
#define KS 8              /* keys per score micro-kernel: BK and KC are multiples of it */
#define MR 6              /* rows per P V micro-kernel: R is a multiple of it */
#define BK 64             /* keys per softmax block */
#define KC 1024           /* keys per gathered chunk */
#define TG 32             /* tiles per group (the chunk is gathered once per group) */

typedef struct {
    const float *q;        /* (T, num_heads, head_dim), rows q_stride floats apart */
    const float *k, *v;    /* (num_slots, num_kv_heads, head_dim), contiguous */
    float *out;            /* (T, num_heads, head_dim), rows out_stride floats apart */
    const int64_t *spans;  /* (S, 3): first query row, end row, position of the first query */
    const int64_t *tables; /* (S, width) block ids */
    const int64_t *tile_base; /* (S + 1,) first tile of each segment, heads included */
    int64_t num_segments, width, block_size, num_heads, num_kv_heads, head_dim;
    int64_t q_stride, out_stride;
    float c;               /* scale * log2(e) */
    int64_t begin, end;    /* tiles [begin, end) of this thread */
} Job;

/* A thread's scratch: one tile group's queries and state, one chunk of keys. */
typedef struct {
    float *qt;      /* (TG, head_dim, R) queries, transposed */
    float *o;       /* (TG, R, head_dim) unnormalized outputs */
    float *m, *l;   /* (TG, R) running max of the scores and sum of 2^(c (s - m)) */
    int32_t *pos;   /* (TG, R) position of each row */
    float *kp, *vp; /* (KC, head_dim) the chunk's keys and values */
    float *st;      /* (BK, R) scores, then probabilities, transposed */
    float *alpha;   /* (R,) rescale of the old sums */
    float *mx;      /* (R,) the block's new max */
} Scratch;

static inline v16 vmax(v16 a, v16 b) {
    const v16i m = a > b;
    return (v16)((m & (v16i)a) | (~m & (v16i)b));
}

/* 2^x for x <= 0 (x <= -127 gives 0, and 2^0 is 1 exactly): 2^round(x) times a degree-5
   polynomial of the rest in [-0.5, 0.5], within 2e-7 relative. */
static inline v16 exp2v(v16 x) {
    const v16 magic = (v16){} + 12582912.0f; /* 1.5 * 2^23: x + magic rounds x */
    x = vmax(x, (v16){} - 127.0f);
    const v16 t = x + magic, f = x - (t - magic);
    const v16i n = (v16i)t - 0x4B400000; /* round(x), from t's low mantissa bits */
    v16 p = 0.001326472731307149f * f + 0.009671512991189957f;
    p = p * f + 0.05550733581185341f;
    p = p * f + 0.24022242426872253f;
    p = p * f + 0.6931470036506653f;
    p = p * f + 1.0f;
    return p * (v16)((n + 127) << 23);
}

/* st[j][:] = K[j] . Q^T for KS keys j: kp (KS, d), qt (d, R). Where ``diagonal``, keys past a
   row's position (pos, (R,)) score -inf. mx (R,) takes the max of every row. */
static inline void score_tile(const float *restrict kp, const float *restrict qt,
                              float *restrict st, int64_t d, int32_t key0, int diagonal,
                              const int32_t *restrict pos, float *restrict mx) {
    v16 acc[KS][RV];
    for (int j = 0; j < KS; j++)
        for (int r = 0; r < RV; r++) acc[j][r] = (v16){};
    for (int64_t x = 0; x < d; x++) {
        v16 qv[RV];
        for (int r = 0; r < RV; r++) qv[r] = load16(qt + x * R + 16 * r);
        for (int j = 0; j < KS; j++) {
            const float kx = kp[j * d + x];
            for (int r = 0; r < RV; r++) acc[j][r] += kx * qv[r];
        }
    }
    if (diagonal) {
        const v16 ninf = (v16){} - __builtin_inff();
        for (int r = 0; r < RV; r++) {
            const v16i p = load16i(pos + 16 * r);
            for (int j = 0; j < KS; j++) {
                const v16i keep = p >= key0 + j;
                acc[j][r] = (v16)((keep & (v16i)acc[j][r]) | (~keep & (v16i)ninf));
            }
        }
    }
    for (int r = 0; r < RV; r++) {
        v16 a = vmax(vmax(acc[0][r], acc[1][r]), vmax(acc[2][r], acc[3][r]));
        v16 b = vmax(vmax(acc[4][r], acc[5][r]), vmax(acc[6][r], acc[7][r]));
        store16(mx + 16 * r, vmax(load16(mx + 16 * r), vmax(a, b)));
    }
    for (int j = 0; j < KS; j++)
        for (int r = 0; r < RV; r++) store16(st + j * R + 16 * r, acc[j][r]);
}

/* o[i][:16 NV] = alpha[i] o[i] + sum_j p[j][i] V[j] for MR rows i: p (nk, R) with column 0 at
   row i = 0, vp (nk, d), o (MR, d). */
#define PV_TILE(NV)                                                                         \
    static inline void pv_tile##NV(const float *restrict p, const float *restrict vp,       \
                                   float *restrict o, const float *restrict alpha,          \
                                   int64_t nk, int64_t d) {                                 \
        v16 acc[MR][NV];                                                                    \
        for (int i = 0; i < MR; i++)                                                        \
            for (int u = 0; u < NV; u++) acc[i][u] = load16(o + i * d + 16 * u) * alpha[i]; \
        for (int64_t j = 0; j < nk; j++) {                                                  \
            v16 vv[NV];                                                                     \
            for (int u = 0; u < NV; u++) vv[u] = load16(vp + j * d + 16 * u);               \
            for (int i = 0; i < MR; i++) {                                                  \
                const float pj = p[j * R + i];                                              \
                for (int u = 0; u < NV; u++) acc[i][u] += pj * vv[u];                       \
            }                                                                               \
        }                                                                                   \
        for (int i = 0; i < MR; i++)                                                        \
            for (int u = 0; u < NV; u++) store16(o + i * d + 16 * u, acc[i][u]);            \
    }
PV_TILE(1)
PV_TILE(2)
PV_TILE(3)
PV_TILE(4)

/* o (R, d) = alpha o + P V for nk keys: 64 head elements at a time, then the rest. */
static void pv_block(const float *p, const float *vp, float *o, const float *alpha, int64_t nk,
                     int64_t d) {
    for (int64_t i = 0; i < R; i += MR) {
        int64_t x = 0;
        for (; x + 64 <= d; x += 64) pv_tile4(p + i, vp + x, o + i * d + x, alpha + i, nk, d);
        switch ((d - x) / 16) {
        case 3: pv_tile3(p + i, vp + x, o + i * d + x, alpha + i, nk, d); break;
        case 2: pv_tile2(p + i, vp + x, o + i * d + x, alpha + i, nk, d); break;
        case 1: pv_tile1(p + i, vp + x, o + i * d + x, alpha + i, nk, d); break;
        }
    }
}

/* Tiles [t0, t1) of segment s, KV head h: rows [t0 R, t1 R) of the segment's n g folded rows
   (rows past the end repeat the last row and are not written back). */
static void run_group(const Job *j, Scratch *w, int64_t s, int64_t h, int64_t t0, int64_t t1) {
    const int64_t d = j->head_dim, g = j->num_heads / j->num_kv_heads, bs = j->block_size;
    const int64_t q_start = j->spans[s * 3], n = j->spans[s * 3 + 1] - q_start;
    const int64_t start = j->spans[s * 3 + 2], ctx = start + n, rows = n * g;
    const int64_t *table = j->tables + s * j->width;
    const int64_t kv_stride = j->num_kv_heads * d, nt = t1 - t0;
    const float c = j->c;
    for (int64_t t = 0; t < nt; t++) {
        float *qt = w->qt + t * d * R;
        const float *qr[R];
        for (int64_t i = 0; i < R; i++) {
            const int64_t fr = (t0 + t) * R + i < rows ? (t0 + t) * R + i : rows - 1;
            qr[i] = j->q + (q_start + fr / g) * j->q_stride + (h * g + fr % g) * d;
            w->pos[t * R + i] = (int32_t)(start + fr / g);
            w->m[t * R + i] = -__builtin_inff();
            w->l[t * R + i] = 0.0f;
        }
        for (int64_t x = 0; x < d; x++)
            for (int64_t i = 0; i < R; i++) qt[x * R + i] = qr[i][x];
        memset(w->o + t * R * d, 0, sizeof(float) * R * d);
    }
    /* The group reads keys [0, its last row's position]. */
    const int64_t num_keys = w->pos[nt * R - 1] + 1;
    for (int64_t c0 = 0; c0 < num_keys; c0 += KC) {
        const int64_t c1 = c0 + KC < num_keys ? c0 + KC : num_keys;
        /* Gather keys [c0, c1 rounded up to KS); past the context they are zero (masked). */
        for (int64_t key = c0; key < (c1 + KS - 1) / KS * KS; key++) {
            float *kd = w->kp + (key - c0) * d, *vd = w->vp + (key - c0) * d;
            if (key < ctx) {
                const int64_t slot = table[key / bs] * bs + key % bs;
                memcpy(kd, j->k + slot * kv_stride + h * d, sizeof(float) * d);
                memcpy(vd, j->v + slot * kv_stride + h * d, sizeof(float) * d);
            } else {
                memset(kd, 0, sizeof(float) * d);
                memset(vd, 0, sizeof(float) * d);
            }
        }
        for (int64_t t = 0; t < nt; t++) {
            const int32_t *pos = w->pos + t * R;
            const int64_t p_min = pos[0], kend = pos[R - 1] + 1 < c1 ? pos[R - 1] + 1 : c1;
            const float *qt = w->qt + t * d * R;
            float *m = w->m + t * R, *l = w->l + t * R, *o = w->o + t * R * d;
            for (int64_t kb = c0; kb < kend; kb += BK) {
                const int64_t nk = (kb + BK < kend ? kb + BK : kend) - kb;
                const int64_t nkr = (nk + KS - 1) / KS * KS;
                for (int r = 0; r < RV; r++) store16(w->mx + 16 * r, load16(m + 16 * r));
                for (int64_t js = 0; js < nkr; js += KS)
                    score_tile(w->kp + (kb - c0 + js) * d, qt, w->st + js * R, d,
                               (int32_t)(kb + js), kb + js + KS - 1 > p_min, pos, w->mx);
                for (int r = 0; r < RV; r++) {
                    const v16 m_old = load16(m + 16 * r), mx = load16(w->mx + 16 * r);
                    const v16 neg = -(mx * c);
                    v16 sum = (v16){};
                    for (int64_t js = 0; js < nkr; js++) {
                        const v16 p = exp2v(load16(w->st + js * R + 16 * r) * c + neg);
                        store16(w->st + js * R + 16 * r, p);
                        sum += p;
                    }
                    const v16 alpha = exp2v(m_old * c + neg);
                    store16(w->alpha + 16 * r, alpha);
                    store16(l + 16 * r, load16(l + 16 * r) * alpha + sum);
                    store16(m + 16 * r, mx);
                }
                pv_block(w->st, w->vp + (kb - c0) * d, o, w->alpha, nkr, d);
            }
        }
    }
    for (int64_t t = 0; t < nt; t++)
        for (int64_t i = 0; i < R && (t0 + t) * R + i < rows; i++) {
            const int64_t fr = (t0 + t) * R + i;
            const float inv = 1.0f / w->l[t * R + i], *src = w->o + (t * R + i) * d;
            float *dst = j->out + (q_start + fr / g) * j->out_stride + (h * g + fr % g) * d;
            for (int64_t x = 0; x < d; x++) dst[x] = src[x] * inv;
        }
}

static void *run(void *arg) {
    const Job *j = (const Job *)arg;
    const int64_t d = j->head_dim, hk = j->num_kv_heads;
    const size_t floats = (size_t)(2 * TG * d * R + 3 * TG * R + 2 * KC * d + BK * R + 2 * R);
    float *buf = malloc(sizeof(float) * floats);
    if (!buf) return (void *)1;
    Scratch w;
    w.qt = buf;
    w.o = w.qt + TG * d * R;
    w.m = w.o + TG * d * R;
    w.l = w.m + TG * R;
    w.pos = (int32_t *)(w.l + TG * R);
    w.kp = w.l + 2 * TG * R;
    w.vp = w.kp + KC * d;
    w.st = w.vp + KC * d;
    w.alpha = w.st + BK * R;
    w.mx = w.alpha + R;
    for (int64_t s = 0; s < j->num_segments; s++) {
        const int64_t per_head = (j->tile_base[s + 1] - j->tile_base[s]) / hk;
        for (int64_t h = 0; h < hk; h++) {
            const int64_t first = j->tile_base[s] + h * per_head;
            const int64_t a = first > j->begin ? first : j->begin;
            const int64_t b = first + per_head < j->end ? first + per_head : j->end;
            for (int64_t t = a; t < b; t += TG)
                run_group(j, &w, s, h, t - first, (t + TG < b ? t + TG : b) - first);
        }
    }
    free(buf);
    return 0;
}

/* Work of tile t of a segment: the keys its rows read, on average, plus a tile's overhead. */
static double tile_work(const int64_t *span, int64_t g, int64_t t) {
    const int64_t rows = (span[1] - span[0]) * g;
    const int64_t last = (t + 1) * R - 1 < rows ? (t + 1) * R - 1 : rows - 1;
    return (double)span[2] + (double)(t * R / g + last / g) / 2.0 + 1.0 + 16.0;
}

/* 0 when every span lies in q's rows and in its table (positions below 2^31), and the entries
   covering each segment's context are blocks of the cache; 2 for a span, 3 for an entry. */
static int check(const int64_t *spans, const int64_t *tables, int64_t num_segments,
                 int64_t width, int64_t block_size, int64_t num_rows, int64_t num_blocks) {
    for (int64_t s = 0; s < num_segments; s++) {
        const int64_t first = spans[s * 3], end = spans[s * 3 + 1], start = spans[s * 3 + 2];
        if (first < 0 || end <= first || end > num_rows || start < 0 || start > INT32_MAX)
            return 2;
        const int64_t ctx = start + (end - first);
        if (ctx > INT32_MAX || ctx > width * block_size) return 2;
        for (int64_t b = 0; b * block_size < ctx; b++) {
            const int64_t block = tables[s * width + b];
            if (block < 0 || block >= num_blocks) return 3;
        }
    }
    return 0;
}

/* Returns 0; 1 when memory for the scratch ran out (nothing is then trusted); 2 or 3 when
   the metadata does not fit (``check``: nothing is read or written). */
int prefill_attention(const float *q, const float *k, const float *v, float *out,
                      const int64_t *spans, const int64_t *tables, int64_t num_segments,
                      int64_t width, int64_t block_size, int64_t num_heads, int64_t num_kv_heads,
                      int64_t head_dim, int64_t q_stride, int64_t out_stride, float scale,
                      int64_t num_threads, int64_t num_rows, int64_t num_blocks) {
    enum { MAX_THREADS = 64 };
    const int64_t g = num_heads / num_kv_heads;
    const int bad = check(spans, tables, num_segments, width, block_size, num_rows, num_blocks);
    if (bad) return bad;
    int64_t *tile_base = malloc(sizeof(int64_t) * (size_t)(num_segments + 1));
    if (!tile_base) return 1;
    double total = 0.0;
    tile_base[0] = 0;
    for (int64_t s = 0; s < num_segments; s++) {
        const int64_t tiles = ((spans[s * 3 + 1] - spans[s * 3]) * g + R - 1) / R;
        tile_base[s + 1] = tile_base[s] + tiles * num_kv_heads;
        for (int64_t t = 0; t < tiles; t++) total += num_kv_heads * tile_work(spans + s * 3, g, t);
    }
    /* Threads only where the work (4 R d flops a unit) outweighs starting them, ~5 us each. */
    if (num_threads > MAX_THREADS) num_threads = MAX_THREADS;
    if (num_threads < 1 || total * 4.0 * R * head_dim < 16e6) num_threads = 1;
    Job jobs[MAX_THREADS];
    for (int64_t n = 0; n < num_threads; n++)
        jobs[n] = (Job){q, k, v, out, spans, tables, tile_base, num_segments, width, block_size,
                        num_heads, num_kv_heads, head_dim, q_stride, out_stride,
                        scale * 1.4426950408889634f, 0, tile_base[num_segments]};
    /* Cut after the tile that passes each thread's share of the work. */
    int64_t cut = 0, tile = 0;
    double done = 0.0;
    for (int64_t s = 0; s < num_segments && num_threads > 1; s++) {
        const int64_t per_head = (tile_base[s + 1] - tile_base[s]) / num_kv_heads;
        for (int64_t h = 0; h < num_kv_heads; h++)
            for (int64_t t = 0; t < per_head; t++) {
                done += tile_work(spans + s * 3, g, t);
                tile++;
                while (cut < num_threads - 1 && done >= total * (cut + 1) / num_threads) {
                    jobs[cut].end = tile;
                    jobs[++cut].begin = tile;
                }
            }
    }
    const int failed = run_jobs(run, jobs, sizeof(Job), num_threads);
    free(tile_base);
    return failed;
}
"""
