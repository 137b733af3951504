/* cpu/backend_cpu_attn.c - the CPU backend's paged-KV-cache ops: writing
 * new K / V (or MLA latent / rope-key) rows through the block table, GQA
 * attention and MLA absorbed attention over the pages.
 *
 * The front end (backend.c) has checked dtypes, shapes, buffers and
 * aliasing. Here are the checks on contents only the device sees: each
 * token's sequence index, its position and the block ids its positions need,
 * all checked before anything is written, with an error that names the
 * token and the field. The math is the reference's (tests/ref/ref_attention.c),
 * token by token: scores with mc_dot, scaled, mc_softmax, weighted sum with
 * mc_axpy, so both agree to rounding. Up to 16 heads that read the same
 * key / value rows (a GQA group; all MLA heads) go together through
 * mc_dot_many / mc_wsum_rows, each head's arithmetic as alone. These
 * (token, head block) units are split over the kernels' thread pool when
 * there is enough work, each unit done whole by one thread with its own
 * score buffers (the longest span of any token), so the output does not
 * depend on the number of threads. */
#include "kernels.h"
#include "cpu/backend_cpu_internal.h"
#include "cpu/kern.h"
#include "kv_sel_check.h"
#include "pool.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The block table, read once per call. */
typedef struct {
    const unsigned char *bt; /* (n_seqs, row_stride) I32 */
    int64_t n_seqs, max_blocks, stride;
    int64_t n_pages, block_size;
} paged;

static paged paged_of(const mc_kv_index *ix, const mc_tensor *pages)
{
    paged p = {.bt = at(&ix->block_table), .n_seqs = ix->block_table.shape[0],
               .max_blocks = ix->block_table.shape[1], .stride = ix->block_table.row_stride,
               .n_pages = pages->shape[0], .block_size = pages->shape[1]};
    return p;
}

static int32_t block_of(const paged *p, int32_t seq, int64_t j)
{
    int32_t b;
    memcpy(&b, p->bt + ((size_t)seq * (size_t)p->stride + (size_t)j) * sizeof b, sizeof b);
    return b;
}

/* Checks token t: its sequence, its position, and the block ids of the
 * positions it reaches [lo, pos] (lo = pos for a write). Sets *lo_out. */
static mc_status token_ok(const char *op, const mc_kv_index *ix, const paged *p, int64_t t,
                          int chunk, int write, int64_t *lo_out, mc_err *err)
{
    int32_t s = i32_at(&ix->seq, t), pos = i32_at(&ix->pos, t);
    if (s < 0 || s >= p->n_seqs)
        return mc_err_set(err, MC_ERR_ARG, "%s: token %lld: seq = %d is outside the block "
                          "table's %lld sequences", op, (long long)t, (int)s, (long long)p->n_seqs);
    if (pos < 0 || pos / p->block_size >= p->max_blocks)
        return mc_err_set(err, MC_ERR_ARG, "%s: token %lld: pos = %d is outside the block table's "
                          "capacity (%lld blocks of %lld positions)", op, (long long)t, (int)pos,
                          (long long)p->max_blocks, (long long)p->block_size);
    int64_t lo = write ? pos : chunk > 0 ? pos - pos % chunk : 0;
    for (int64_t j = lo / p->block_size; j <= pos / p->block_size; j++) {
        int32_t b = block_of(p, s, j);
        if (b < 0 || b >= p->n_pages)
            return mc_err_set(err, MC_ERR_ARG, "%s: token %lld: block_table[%d][%lld] = %d is "
                              "outside the cache's %lld blocks", op, (long long)t, (int)s,
                              (long long)j, (int)b, (long long)p->n_pages);
    }
    *lo_out = lo;
    return MC_OK;
}

/* First row of the slot holding position `pos` of sequence s (rows_per_slot
 * rows of the pages tensor per slot). */
static int64_t slot_row(const paged *p, int32_t s, int64_t pos, int64_t rows_per_slot)
{
    int64_t b = block_of(p, s, pos / p->block_size);
    return (b * p->block_size + pos % p->block_size) * rows_per_slot;
}

mc_status mc_cpu_kv_write(void *ctx, const mc_kv_index *ix, const mc_tensor *src,
                          mc_tensor *pages, mc_err *err)
{
    (void)ctx;
    paged p = paged_of(ix, pages);
    int64_t n = ix->pos.shape[0], lo;
    int64_t rps = mc_tensor_rows(pages) / (p.n_pages * p.block_size); /* rows per slot */
    int64_t W = mc_tensor_cols(pages);
    size_t rb = (size_t)W * sizeof(float);
    int bf = pages->dtype == MC_DT_BF16; /* each value rounded to nearest even */
    for (int64_t t = 0; t < n; t++) /* all tokens first: nothing is written on refusal */
        if (token_ok("kv_write", ix, &p, t, 0, 1, &lo, err) != MC_OK)
            return err ? err->status : MC_ERR_ARG;
    for (int64_t t = 0; t < n; t++) {
        int64_t r0 = slot_row(&p, i32_at(&ix->seq, t), i32_at(&ix->pos, t), rps);
        for (int64_t r = 0; r < rps; r++) {
            const float *x = row_f32(src, t * rps + r);
            if (bf) {
                uint16_t *h = (uint16_t *)row_kv(pages, r0 + r);
                for (int64_t e = 0; e < W; e++)
                    h[e] = mc_f32_to_bf16(x[e]);
            } else {
                memcpy(row_f32(pages, r0 + r), x, rb);
            }
        }
    }
    return MC_OK;
}

/* Checks every token and returns the longest span of positions any token
 * attends to (the score buffer's length) and the sum of the spans. */
static mc_status spans_ok(const char *op, const mc_kv_index *ix, const paged *p, int chunk,
                          int64_t *max_span, double *sum, mc_err *err)
{
    int64_t n = ix->pos.shape[0], lo = 0, m = 1;
    double total = 0;
    *max_span = 1; /* set on every path */
    *sum = 0;
    for (int64_t t = 0; t < n; t++) {
        if (token_ok(op, ix, p, t, chunk, 0, &lo, err) != MC_OK)
            return err ? err->status : MC_ERR_ARG;
        int64_t span = i32_at(&ix->pos, t) - lo + 1;
        m = span > m ? span : m;
        total += (double)span;
    }
    *max_span = m;
    *sum = total;
    return MC_OK;
}

/* The factor of token t's scores: scale, times q_scale[t] when given. */
static float token_scale(const mc_attn_opts *o, int64_t t)
{
    return o->q_scale ? o->scale * row_f32(o->q_scale, 0)[t] : o->scale;
}

/* ---- (token, head block) units over the pool ---- */

/* Below this many multiply-adds (scores and weighted sums of a call) the
 * units run on the calling thread: waking the pool costs more. */
#define UNITS_PARALLEL_MIN (1 << 16)

/* Heads done together: they share each key / value row they read
 * (mc_dot_many, mc_wsum_rows), every head's arithmetic as alone. Fewer at
 * long spans, so that a thread's scratch (two spans of floats per head)
 * stays under HEAD_SCRATCH_MAX bytes. */
#define HEAD_BLOCK 16
#define HEAD_SCRATCH_MAX ((size_t)4 << 20)

/* Heads per block for a score span of `span` positions. */
static int head_block(int64_t span)
{
    int hb = HEAD_BLOCK;
    while (hb > 1 && (size_t)span * (2 * (size_t)hb * sizeof(float)) > HEAD_SCRATCH_MAX)
        hb /= 2;
    return hb;
}

typedef struct {
    mc_cpu_unit_fn fn;
    void *job;
    int64_t per_token, units, per_task;
    unsigned char *scratch; /* `bytes` per thread */
    size_t bytes;
} units_job;

static void units_task(void *ctx, int task, int thread)
{
    const units_job *uj = ctx;
    int64_t a = (int64_t)task * uj->per_task, b = a + uj->per_task;
    b = b < uj->units ? b : uj->units;
    for (int64_t i = a; i < b; i++)
        uj->fn(uj->job, i / uj->per_token, i % uj->per_token,
               uj->scratch + (size_t)thread * uj->bytes);
}

mc_status mc_cpu_run_units(mc_arena *sa, int64_t n, int64_t per_token, size_t bytes, double work,
                           mc_cpu_unit_fn fn, void *job)
{
    mc_pool *pool = work >= UNITS_PARALLEL_MIN ? mc_kernels_pool() : NULL;
    int nt = pool ? mc_pool_threads(pool) : 1;
    int64_t units = n * per_token;
    if (units < 2)
        pool = NULL, nt = 1;
    bytes = (bytes + 63) & ~(size_t)63; /* no cache line shared between threads */
    unsigned char *scratch = bytes > SIZE_MAX / (size_t)nt ? NULL
                                                           : mc_arena_alloc(sa, bytes * (size_t)nt, 64);
    if (!scratch)
        return MC_ERR_NOMEM;
    units_job uj = {.fn = fn, .job = job, .per_token = per_token, .units = units,
                    .scratch = scratch, .bytes = bytes};
    if (!pool) {
        uj.per_task = units;
        units_task(&uj, 0, 0);
        return MC_OK;
    }
    int64_t tasks = 8 * (int64_t)nt < units ? 8 * (int64_t)nt : units;
    uj.per_task = (units + tasks - 1) / tasks;
    mc_pool_run(pool, (int)((units + uj.per_task - 1) / uj.per_task), units_task, &uj);
    return MC_OK;
}

/* Positions ahead of the one being scored whose key rows are asked for:
 * into L1 (near) and into L2 (far). One KV head's rows lie a slot apart in
 * the pages (nkv rows), a pattern the hardware prefetchers do not follow:
 * on the 2-core Zen 4 VM, 8 heads x 1024 key rows of 128 floats 2 KiB
 * apart, from memory, the scores took 280 us without, 110 with (70 from
 * cache). */
#define ATTN_PF_NEAR 4
#define ATTN_PF_FAR 16

/* Asks for rows[i + ATTN_PF_NEAR] (into L1) and rows[i + ATTN_PF_FAR] (into
 * L2), `bytes` each, where they exist. */
static inline void prefetch_rows(const void *const *rows, int64_t i, int64_t S, size_t bytes)
{
    if (i + ATTN_PF_NEAR < S)
        for (size_t b = 0; b < bytes; b += 64)
            __builtin_prefetch((const char *)rows[i + ATTN_PF_NEAR] + b, 0, 3);
    if (i + ATTN_PF_FAR < S)
        for (size_t b = 0; b < bytes; b += 64)
            __builtin_prefetch((const char *)rows[i + ATTN_PF_FAR] + b, 0, 2);
}

/* ---- GQA attention ---- */

typedef struct {
    const mc_tensor *q, *k_pages, *v_pages, *y;
    const mc_kv_index *ix;
    const mc_attn_opts *opt;
    paged p;
    int64_t nh, nkv, grp, blocks; /* blocks: head blocks per KV group */
    int64_t span;
    int hd, vd, hb; /* hb: heads per block (head_block) */
} attn_job;

/* Unit u of token t: up to hb heads of KV group u / blocks. Each
 * head: scores in position order, scaled, softmax, the weighted sum of the
 * value rows in position order (mc_dot / mc_axpy arithmetic). */
static void attn_unit(void *job, int64_t t, int64_t u, void *scratch)
{
    const attn_job *j = job;
    const paged *p = &j->p;
    int32_t s = i32_at(&j->ix->seq, t), pos = i32_at(&j->ix->pos, t);
    int64_t lo = j->opt->chunk > 0 ? pos - pos % j->opt->chunk : 0, S = pos - lo + 1;
    float sc = token_scale(j->opt, t);
    int64_t g = u / j->blocks, h0 = g * j->grp + (u % j->blocks) * j->hb;
    int m = (int)(g * j->grp + j->grp - h0 < j->hb ? g * j->grp + j->grp - h0 : j->hb);
    float *score = scratch; /* head k's scores at score + k * span; weights; row pointers */
    const float *qh[HEAD_BLOCK];
    float *o[HEAD_BLOCK], dots[HEAD_BLOCK];
    for (int k = 0; k < m; k++) {
        qh[k] = row_f32(j->q, t * j->nh + h0 + k);
        o[k] = row_f32(j->y, t * j->nh + h0 + k);
    }
    const void **rows = (const void **)(score + 2 * j->hb * j->span); /* key, then value rows */
    int bf = j->k_pages->dtype == MC_DT_BF16;
    size_t es = mc_dtype_size(j->k_pages->dtype);
    for (int64_t i = 0; i < S; i++)
        rows[i] = row_kv(j->k_pages, slot_row(p, s, lo + i, j->nkv) + g);
    for (int64_t i = 0; i < S; i++) {
        prefetch_rows(rows, i, S, (size_t)j->hd * es);
        if (bf)
            mc_dot_many_bf16(qh, m, rows[i], j->hd, dots);
        else
            mc_dot_many(qh, m, rows[i], j->hd, dots);
        for (int k = 0; k < m; k++)
            score[k * j->span + i] = dots[k];
    }
    float *wt = score + j->hb * j->span; /* the weights position by position */
    for (int k = 0; k < m; k++) {
        float *sk = score + k * j->span;
        for (int64_t i = 0; i < S; i++)
            sk[i] *= sc;
        mc_softmax(sk, (int)S);
        for (int64_t i = 0; i < S; i++)
            wt[i * m + k] = sk[i];
    }
    /* the value rows: the same slot rows as the keys' (slot_row worked out once) */
    const char *k0 = row_kv(j->k_pages, 0), *v0 = row_kv(j->v_pages, 0);
    size_t ks = (size_t)j->k_pages->row_stride * es, vs = (size_t)j->v_pages->row_stride * es;
    for (int64_t i = 0; i < S; i++)
        rows[i] = v0 + (size_t)((const char *)rows[i] - k0) / ks * vs;
    if (bf)
        mc_wsum_rows_bf16(o, m, wt, (const uint16_t *const *)rows, (int)S, j->vd, 0);
    else
        mc_wsum_rows(o, m, wt, (const float *const *)rows, (int)S, j->vd, 0);
}

mc_status mc_cpu_attention(void *ctx, const mc_tensor *q, const mc_tensor *k_pages,
                           const mc_tensor *v_pages, const mc_kv_index *ix,
                           const mc_attn_opts *opt, mc_tensor *y, mc_err *err)
{
    mc_arena *sa = mc_cpu_scratch(ctx); /* op scratch, given back on return */
    mc_arena_mark mk = mc_arena_mark_get(sa);
    attn_job j = {.q = q, .k_pages = k_pages, .v_pages = v_pages, .y = y, .ix = ix, .opt = opt,
                  .p = paged_of(ix, k_pages), .nh = q->shape[1], .nkv = k_pages->shape[2],
                  .hd = (int)k_pages->shape[3], .vd = (int)v_pages->shape[3]};
    j.grp = j.nh / j.nkv;
    if (k_pages->dtype == MC_DT_BF16 && (j.hd > MC_BF16_ROW_MAX || j.vd > MC_BF16_ROW_MAX))
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "attention: BF16 pages of rows of %d / %d "
                          "values (at most %d)", j.hd, j.vd, MC_BF16_ROW_MAX);
    double positions;
    mc_status st = spans_ok("attention", ix, &j.p, opt->chunk, &j.span, &positions, err);
    if (st != MC_OK)
        return st;
    j.hb = head_block(j.span);
    j.blocks = (j.grp + j.hb - 1) / j.hb;
    double work = positions * (double)j.nh * (j.hd + j.vd);
    if (mc_cpu_run_units(sa, q->shape[0], j.nkv * j.blocks,
                  (size_t)j.span * (2 * (size_t)j.hb * sizeof(float) + sizeof(float *)), work, attn_unit,
                  &j) != MC_OK) {
        mc_arena_reset_to(sa, mk);
        return mc_err_set(err, MC_ERR_NOMEM, "attention: out of memory for %lld scores",
                          (long long)j.span);
    }
    mc_arena_reset_to(sa, mk);
    return MC_OK;
}

/* Checks opt->sel (I32 (n, k)) of every token: each entry -1 or in [lo, pos], at least one kept. */
static mc_status sel_ok(const mc_tensor *sel, const mc_kv_index *ix, int chunk, mc_err *err)
{
    int64_t n = ix->pos.shape[0], k = mc_tensor_cols(sel);
    for (int64_t t = 0; t < n; t++) {
        const int32_t *st = (const int32_t *)at(sel) + (size_t)t * (size_t)sel->row_stride;
        mc_status s = mc_kv_sel_row_ok(st, k, i32_at(&ix->pos, t), chunk, t, err);
        if (s != MC_OK)
            return s;
    }
    return MC_OK;
}

/* ---- MLA absorbed attention ---- */

typedef struct {
    const mc_tensor *q_lat, *q_pe, *lat_pages, *pe_pages, *y;
    const mc_kv_index *ix;
    const mc_attn_opts *opt;
    paged p;
    int64_t nh, span;
    int lr, rd, hb; /* hb: heads per block (head_block) */
} mla_job;

/* Unit u of token t: heads [u * hb, +hb), all reading the same latent and
 * rope-key rows. scratch: hb spans of scores, the
 * same weights position by position, span row pointers, then (with
 * opt->sel) span keep flags. */
static void mla_unit(void *job, int64_t t, int64_t u, void *scratch)
{
    const mla_job *j = job;
    const paged *p = &j->p;
    const mc_attn_opts *opt = j->opt;
    float *score = scratch; /* head k's at score + k * span */
    int32_t s = i32_at(&j->ix->seq, t), pos = i32_at(&j->ix->pos, t);
    int64_t lo = opt->chunk > 0 ? pos - pos % opt->chunk : 0, S = pos - lo + 1;
    int64_t h0 = u * j->hb;
    int m = (int)(j->nh - h0 < j->hb ? j->nh - h0 : j->hb);
    float sc = token_scale(opt, t);
    /* with opt->sel, keep[i] = 1 for the kept positions lo + i (as the engine's mask) */
    unsigned char *keep =
        opt->sel ? (unsigned char *)(score + 2 * j->hb * j->span) + j->span * sizeof(float *)
                 : NULL;
    if (keep) {
        const int32_t *kp = (const int32_t *)at(opt->sel) + (size_t)t * (size_t)opt->sel->row_stride;
        memset(keep, 0, (size_t)S);
        for (int64_t i = 0; i < mc_tensor_cols(opt->sel); i++)
            if (kp[i] >= 0)
                keep[kp[i] - lo] = 1;
    }
    const float *ql[HEAD_BLOCK], *qp[HEAD_BLOCK];
    float *o[HEAD_BLOCK], dl[HEAD_BLOCK], dp[HEAD_BLOCK];
    float *wt = score + j->hb * j->span; /* the weights position by position */
    const void **rows = (const void **)(wt + j->hb * j->span);
    int bf = j->lat_pages->dtype == MC_DT_BF16;
    size_t es = mc_dtype_size(j->lat_pages->dtype);
    for (int k = 0; k < m; k++) {
        ql[k] = row_f32(j->q_lat, t * j->nh + h0 + k);
        qp[k] = row_f32(j->q_pe, t * j->nh + h0 + k);
        o[k] = row_f32(j->y, t * j->nh + h0 + k);
    }
    for (int64_t i = 0; i < S; i++) /* a dropped one weighs 0 */
        rows[i] = row_kv(j->lat_pages, slot_row(p, s, lo + i, 1));
    for (int64_t i = 0; i < S; i++) {
        if (keep && !keep[i]) {
            for (int k = 0; k < m; k++)
                score[k * j->span + i] = 0.0f;
            continue;
        }
        if (!keep) /* (a sparse selection reads few of the rows ahead) */
            prefetch_rows(rows, i, S, (size_t)j->lr * es);
        const void *pe = row_kv(j->pe_pages, slot_row(p, s, lo + i, 1));
        if (bf) {
            mc_dot_many_bf16(ql, m, rows[i], j->lr, dl);
            mc_dot_many_bf16(qp, m, pe, j->rd, dp);
        } else {
            mc_dot_many(ql, m, rows[i], j->lr, dl);
            mc_dot_many(qp, m, pe, j->rd, dp);
        }
        for (int k = 0; k < m; k++)
            score[k * j->span + i] = dl[k] + dp[k];
    }
    for (int k = 0; k < m; k++) {
        float *sk = score + k * j->span;
        for (int64_t i = 0; i < S; i++) /* a dropped position weighs 0 whatever sc is */
            sk[i] = keep && !keep[i] ? -INFINITY : sk[i] * sc;
        mc_softmax(sk, (int)S);
        for (int64_t i = 0; i < S; i++)
            wt[i * m + k] = sk[i];
    }
    /* a zero weight adds nothing (not even to the sign of 0) */
    if (bf)
        mc_wsum_rows_bf16(o, m, wt, (const uint16_t *const *)rows, (int)S, j->lr, 1);
    else
        mc_wsum_rows(o, m, wt, (const float *const *)rows, (int)S, j->lr, 1);
}

mc_status mc_cpu_mla_decode(void *ctx, const mc_tensor *q_lat, const mc_tensor *q_pe,
                            const mc_tensor *lat_pages, const mc_tensor *pe_pages,
                            const mc_kv_index *ix, const mc_attn_opts *opt, mc_tensor *y,
                            mc_err *err)
{
    mc_arena *sa = mc_cpu_scratch(ctx); /* op scratch, given back on return */
    mc_arena_mark mk = mc_arena_mark_get(sa);
    mla_job j = {.q_lat = q_lat, .q_pe = q_pe, .lat_pages = lat_pages, .pe_pages = pe_pages,
                 .y = y, .ix = ix, .opt = opt, .p = paged_of(ix, lat_pages),
                 .nh = q_lat->shape[1], .lr = (int)lat_pages->shape[2],
                 .rd = (int)pe_pages->shape[2]};
    if (lat_pages->dtype == MC_DT_BF16 && (j.lr > MC_BF16_ROW_MAX || j.rd > MC_BF16_ROW_MAX))
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "mla_decode: BF16 pages of rows of %d / %d "
                          "values (at most %d)", j.lr, j.rd, MC_BF16_ROW_MAX);
    double positions;
    mc_status st = spans_ok("mla_decode", ix, &j.p, opt->chunk, &j.span, &positions, err);
    if (st == MC_OK && opt->sel)
        st = sel_ok(opt->sel, ix, opt->chunk, err);
    if (st != MC_OK)
        return st;
    j.hb = head_block(j.span);
    size_t bytes =
        (size_t)j.span * (2 * (size_t)j.hb * sizeof(float) + sizeof(float *) + (opt->sel ? 1 : 0));
    double work = positions * (double)j.nh * (2.0 * j.lr + j.rd);
    if (mc_cpu_run_units(sa, q_lat->shape[0], (j.nh + j.hb - 1) / j.hb, bytes, work, mla_unit,
                  &j) != MC_OK) {
        mc_arena_reset_to(sa, mk);
        return mc_err_set(err, MC_ERR_NOMEM, "mla_decode: out of memory for %lld scores",
                          (long long)j.span);
    }
    mc_arena_reset_to(sa, mk);
    return MC_OK;
}
