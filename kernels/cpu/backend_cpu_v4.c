/* cpu/backend_cpu_v4.c - the CPU backend's DeepSeek-V4 ops: hyper-connection
 * mapping and write-back, the compressors' pooling over paged per-position
 * projections, the lightning indexer over compressed keys, attention with
 * sinks, a sliding window and compressed entries, and hash routing.
 *
 * The math is the reference's (tests/ref/ref_deepseek_v4*.c), token by
 * token, with the same kernels (mc_softmax, mc_rmsnorm, mc_dot, mc_axpy,
 * mc_rope_rotate) in the same order, so both agree to the last bit where the inputs do. The front
 * end (backend_ops.c) has checked shapes, dtypes and aliasing; here are the
 * checks on contents (sequence rows, positions, block ids, expert ids),
 * all done before anything is written. */
#include "cpu/backend_cpu_v4.h"
#include "cpu/backend_cpu_internal.h"
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- paged access ---- */

typedef struct {
    const mc_kv_index *ix;
    int64_t n_seqs, max_blocks, stride, n_pages, block_size;
} pg;

static pg pg_of(const mc_kv_index *ix, const mc_tensor *pages) {
    pg p = {.ix = ix,
            .n_seqs = ix->block_table.shape[0],
            .max_blocks = ix->block_table.shape[1],
            .stride = ix->block_table.row_stride,
            .n_pages = pages->shape[0],
            .block_size = pages->shape[1]};
    return p;
}

static int32_t pg_block(const pg *p, int32_t s, int64_t j) {
    int32_t b;
    memcpy(&b, at(&p->ix->block_table) + ((size_t)s * (size_t)p->stride + (size_t)j) * sizeof b,
           sizeof b);
    return b;
}

/* Token t reaches positions [lo, pos] of its sequence: checks its row, its
 * position and every block id on the way. */
static mc_status pg_check(const char *op, const pg *p, int64_t t, int64_t lo, mc_err *err) {
    int32_t s = i32_at(&p->ix->seq, t), pos = i32_at(&p->ix->pos, t);
    if (s < 0 || s >= p->n_seqs)
        return mc_err_set(err, MC_ERR_ARG,
                          "%s: token %lld: seq = %d is outside the block table's "
                          "%lld sequences",
                          op, (long long)t, (int)s, (long long)p->n_seqs);
    if (pos < 0 || pos / p->block_size >= p->max_blocks)
        return mc_err_set(err, MC_ERR_ARG,
                          "%s: token %lld: pos = %d is outside the block table's "
                          "capacity (%lld blocks of %lld positions)",
                          op, (long long)t, (int)pos, (long long)p->max_blocks,
                          (long long)p->block_size);
    for (int64_t j = (lo < 0 ? 0 : lo) / p->block_size; j <= pos / p->block_size; j++) {
        int32_t b = pg_block(p, s, j);
        if (b < 0 || b >= p->n_pages)
            return mc_err_set(err, MC_ERR_ARG,
                              "%s: token %lld: block_table[%d][%lld] = %d is "
                              "outside the cache's %lld blocks",
                              op, (long long)t, (int)s, (long long)j, (int)b,
                              (long long)p->n_pages);
    }
    return MC_OK;
}

/* The row of `pages` holding position pos of sequence s. */
static float *pg_row(const pg *p, const mc_tensor *pages, int32_t s, int64_t pos) {
    int64_t b = pg_block(p, s, pos / p->block_size);
    return row_f32(pages, b * p->block_size + pos % p->block_size);
}

/* ---- hyper-connections ---- */

/* Sinkhorn projection as the reference's mc_v4_sinkhorn (tests/ref/ref_deepseek_v4.c). */
static void sinkhorn(const float *logits, int hc, int iters, float eps, float *comb) {
    for (int j = 0; j < hc; j++) {
        memcpy(comb + j * hc, logits + j * hc, (size_t)hc * sizeof *comb);
        mc_softmax(comb + j * hc, hc);
        for (int k = 0; k < hc; k++)
            comb[j * hc + k] += eps;
    }
    for (int it = 0; it < iters; it++) {
        if (it > 0)
            for (int j = 0; j < hc; j++) {
                float s = 0;
                for (int k = 0; k < hc; k++)
                    s += comb[j * hc + k];
                for (int k = 0; k < hc; k++)
                    comb[j * hc + k] /= s + eps;
            }
        for (int k = 0; k < hc; k++) {
            float s = 0;
            for (int j = 0; j < hc; j++)
                s += comb[j * hc + k];
            for (int j = 0; j < hc; j++)
                comb[j * hc + k] /= s + eps;
        }
    }
}

mc_status mc_cpu_v4_hc_pre(void *ctx, const mc_tensor *x, const mc_tensor *mix,
                           const mc_tensor *base, const mc_tensor *scale, const mc_v4_hc_opts *o,
                           mc_tensor *post, mc_tensor *comb, mc_tensor *y, mc_err *err) {
    (void)ctx;
    (void)err;
    int64_t n = mc_tensor_rows(x);
    int k = o->hc, H = (int)mc_tensor_cols(y);
    const float *b = row_f32(base, 0), *sc = row_f32(scale, 0);
    float lg[64 * 64];
    for (int64_t t = 0; t < n; t++) {
        const float *mx = row_f32(mix, t), *xt = row_f32(x, t);
        float *col = row_f32(y, t);
        memset(col, 0, (size_t)H * sizeof *col);
        for (int j = 0; j < k; j++) {
            float pre = mc_sigmoid(mx[j] * sc[0] + b[j]) + o->eps;
            if (post) row_f32(post, t)[j] = 2.0f * mc_sigmoid(mx[k + j] * sc[1] + b[k + j]);
            mc_axpy(col, pre, xt + (size_t)j * H, H);
        }
        if (!post) continue;
        for (int i = 0; i < k * k; i++)
            lg[i] = mx[2 * k + i] * sc[2] + b[2 * k + i];
        sinkhorn(lg, k, o->iters, o->eps, row_f32(comb, t));
    }
    return MC_OK;
}

mc_status mc_cpu_v4_hc_post(void *ctx, mc_tensor *x, const mc_tensor *post, const mc_tensor *comb,
                            const mc_tensor *y, mc_err *err) {
    mc_arena *sa = mc_cpu_scratch(ctx); /* op scratch, given back on return */
    mc_arena_mark mk = mc_arena_mark_get(sa);
    int64_t n = mc_tensor_rows(x);
    int k = (int)mc_tensor_cols(post), H = (int)mc_tensor_cols(y);
    float *tmp = mc_arena_alloc_n(sa, (size_t)k * H, sizeof *tmp); /* (hc, H), one token's new streams */
    if (!tmp) return mc_err_set(err, MC_ERR_NOMEM, "v4_hc_post: out of memory");
    for (int64_t t = 0; t < n; t++) {
        float *xt = row_f32(x, t);
        const float *ct = row_f32(comb, t), *pt = row_f32(post, t), *yt = row_f32(y, t);
        for (int o = 0; o < k; o++) {
            float *dst = tmp + (size_t)o * H;
            for (int h = 0; h < H; h++)
                dst[h] = pt[o] * yt[h];
            for (int j = 0; j < k; j++)
                mc_axpy(dst, ct[j * k + o], xt + (size_t)j * H, H);
        }
        memcpy(xt, tmp, (size_t)k * H * sizeof *xt);
    }
    mc_arena_reset_to(sa, mk);
    return MC_OK;
}

/* ---- compressors ---- */

mc_status mc_cpu_v4_compress(void *ctx, const mc_tensor *kv_pages, const mc_tensor *gate_pages,
                             const mc_tensor *ape, const mc_tensor *norm, const mc_tensor *cs,
                             const mc_tensor *sn, const mc_kv_index *ix, const mc_v4_comp_opts *o,
                             mc_tensor *out_pages, mc_err *err) {
    mc_arena *sa = mc_cpu_scratch(ctx); /* op scratch, given back on return */
    mc_arena_mark mk = mc_arena_mark_get(sa);
    pg p = pg_of(ix, kv_pages);
    int64_t n = ix->pos.shape[0], P = mc_tensor_rows(cs);
    int R = o->rate, cd = (int)out_pages->shape[2], rd = 2 * (int)mc_tensor_cols(cs);
    for (int64_t t = 0; t < n; t++) { /* all checks first: nothing is written on refusal */
        int32_t pos = i32_at(&ix->pos, t);
        if ((pos + 1) % R != 0) continue;
        int64_t w = (pos + 1) / R - 1;
        mc_status st = pg_check("v4_compress", &p, t, (w - o->overlap) * R, err);
        if (st != MC_OK) return st;
        if (w * R >= P)
            return mc_err_set(err, MC_ERR_ARG,
                              "v4_compress: token %lld: window start %lld is "
                              "past the %lld rows of cs",
                              (long long)t, (long long)(w * R), (long long)P);
    }
    float *g = mc_arena_alloc_n(sa, (size_t)2 * R, sizeof *g), *v = mc_arena_alloc_n(sa, (size_t)2 * R, sizeof *v);
    if (!g || !v) {
        mc_arena_reset_to(sa, mk);
        return mc_err_set(err, MC_ERR_NOMEM, "v4_compress: out of memory");
    }
    for (int64_t t = 0; t < n; t++) {
        int32_t s = i32_at(&ix->seq, t), pos = i32_at(&ix->pos, t);
        if ((pos + 1) % R != 0) continue;
        int64_t w = (pos + 1) / R - 1;
        float *e = pg_row(&p, out_pages, s, pos);
        int off = o->overlap ? cd : 0;
        for (int ch = 0; ch < cd; ch++) {
            int ns = 0;
            if (o->overlap && w > 0)
                for (int j = 0; j < R; j++) { /* first half of window w - 1 */
                    int64_t q = (w - 1) * R + j;
                    g[ns] = pg_row(&p, gate_pages, s, q)[ch] + row_f32(ape, j)[ch];
                    v[ns++] = pg_row(&p, kv_pages, s, q)[ch];
                }
            for (int j = 0; j < R; j++) {
                int64_t q = w * R + j;
                g[ns] = pg_row(&p, gate_pages, s, q)[off + ch] + row_f32(ape, j)[off + ch];
                v[ns++] = pg_row(&p, kv_pages, s, q)[off + ch];
            }
            mc_softmax(g, ns);
            float acc = 0;
            for (int j = 0; j < ns; j++)
                acc += g[j] * v[j];
            e[ch] = acc;
        }
        mc_rmsnorm(e, e, row_f32(norm, 0), cd, o->eps);
        mc_rope_rotate(e + cd - rd, rd, 1, row_f32(cs, w * R), row_f32(sn, w * R));
    }
    mc_arena_reset_to(sa, mk);
    return MC_OK;
}

/* ---- the lightning indexer ---- */

typedef struct {
    float v;
    int i;
} sel_t;

/* The reference's mc_v4_select_topk (tests/ref/ref_deepseek_v4_attn.c; torch.topk on CPU:
 * libstdc++ introselect with "greater"): q[0..k) hold k largest. */
static int sel_gt(const sel_t *a, const sel_t *b) {
    return (isnan(a->v) && !isnan(b->v)) || a->v > b->v;
}

static void sel_swap(sel_t *a, sel_t *b) {
    sel_t t = *a;
    *a = *b;
    *b = t;
}

static void sel_insertion(sel_t *first, sel_t *last) {
    if (first == last) return;
    for (sel_t *i = first + 1; i < last; i++) {
        sel_t val = *i;
        if (sel_gt(&val, first)) {
            memmove(first + 1, first, (size_t)(i - first) * sizeof *first);
            *first = val;
        } else {
            sel_t *j = i;
            while (sel_gt(&val, j - 1)) {
                *j = *(j - 1);
                j--;
            }
            *j = val;
        }
    }
}

static void sel_median_to_first(sel_t *r, sel_t *a, sel_t *b, sel_t *c) {
    if (sel_gt(a, b)) {
        if (sel_gt(b, c))
            sel_swap(r, b);
        else if (sel_gt(a, c))
            sel_swap(r, c);
        else
            sel_swap(r, a);
    } else if (sel_gt(a, c)) {
        sel_swap(r, a);
    } else if (sel_gt(b, c)) {
        sel_swap(r, c);
    } else {
        sel_swap(r, b);
    }
}

static sel_t *sel_partition(sel_t *first, sel_t *last, const sel_t *pivot) {
    for (;;) {
        while (sel_gt(first, pivot))
            first++;
        last--;
        while (sel_gt(pivot, last))
            last--;
        if (!(first < last)) return first;
        sel_swap(first, last);
        first++;
    }
}

static void select_topk(sel_t *q, int n, int k) {
    if (k <= 0 || k >= n) return;
    sel_t *first = q, *last = q + n, *nth = q + k - 1;
    int depth = 0;
    for (int m = n; m > 1; m >>= 1)
        depth += 2;
    while (last - first > 3) {
        if (depth-- == 0) break;
        sel_t *mid = first + (last - first) / 2;
        sel_median_to_first(first, first + 1, mid, last - 1);
        sel_t *cut = sel_partition(first + 1, last, first);
        if (cut <= nth)
            first = cut;
        else
            last = cut;
    }
    sel_insertion(first, last);
}

mc_status mc_cpu_v4_index_topk(void *ctx, const mc_tensor *iq, const mc_tensor *w,
                               const mc_tensor *key_pages, const mc_kv_index *ix,
                               const mc_v4_index_opts *o, mc_tensor *sel, mc_err *err) {
    mc_arena *sa = mc_cpu_scratch(ctx); /* op scratch, given back on return */
    mc_arena_mark mk = mc_arena_mark_get(sa);
    pg p = pg_of(ix, key_pages);
    int64_t n = iq->shape[0];
    int ih = (int)iq->shape[1], id = (int)iq->shape[2], R = o->rate, most = 0;
    for (int64_t t = 0; t < n; t++) {
        mc_status st = pg_check("v4_index_topk", &p, t, 0, err);
        if (st != MC_OK) return st;
        int nv = (i32_at(&ix->pos, t) + 1) / R, nr = o->n_row ? i32_at(o->n_row, t) : 0;
        most = nv > most ? nv : most;
        most = nr > most ? nr : most;
    }
    sel_t *q = mc_arena_alloc_n(sa, (size_t)most + 1, sizeof *q); /* [row] one token's scores */
    float *wh = mc_arena_alloc_n(sa, (size_t)ih, sizeof *wh);
    if (!q || !wh) {
        mc_arena_reset_to(sa, mk);
        return mc_err_set(err, MC_ERR_NOMEM, "v4_index_topk: out of memory");
    }
    for (int64_t t = 0; t < n; t++) {
        int32_t s = i32_at(&ix->seq, t), pos = i32_at(&ix->pos, t);
        int nv = (pos + 1) / R, nr = o->n_row ? i32_at(o->n_row, t) : 0, row = nv > nr ? nv : nr;
        const float *wt = row_f32(w, t);
        for (int h = 0; h < ih; h++)
            wh[h] = wt[h] * o->weight_scale;
        for (int e = 0; e < row; e++) {
            q[e].i = e;
            q[e].v = -INFINITY;
            if (e >= nv) continue;
            const float *ks = pg_row(&p, key_pages, s, (int64_t)(e + 1) * R - 1);
            float acc = 0;
            for (int h = 0; h < ih; h++) {
                float dp = mc_dot(row_f32(iq, t * ih + h), ks, id);
                acc += (dp > 0 ? dp : 0) * o->score_scale * wh[h];
            }
            q[e].v = acc;
        }
        int k = o->k < row ? o->k : row, m = 0;
        select_topk(q, row, k);
        int32_t *out = row_i32(sel, t);
        for (int j = 0; j < k; j++)
            if (q[j].i < nv) out[m++] = q[j].i;
        for (; m < o->k; m++)
            out[m] = -1;
    }
    mc_arena_reset_to(sa, mk);
    return MC_OK;
}

/* ---- attention ---- */

mc_status mc_cpu_v4_attention(void *ctx, const mc_tensor *q, const mc_tensor *kv_pages,
                              const mc_tensor *comp_pages, const mc_tensor *sinks,
                              const mc_tensor *sel, const mc_kv_index *ix, const mc_v4_attn_opts *o,
                              mc_tensor *y, mc_err *err) {
    mc_arena *sa = mc_cpu_scratch(ctx); /* op scratch, given back on return */
    mc_arena_mark mk = mc_arena_mark_get(sa);
    pg p = pg_of(ix, kv_pages);
    int64_t n = q->shape[0];
    int nh = (int)q->shape[1], hd = (int)q->shape[2], R = o->rate, W = o->window;
    int ksel = sel ? (int)mc_tensor_cols(sel) : 0, most = 1;
    for (int64_t t = 0; t < n; t++) {
        int32_t pos = i32_at(&ix->pos, t);
        mc_status st = pg_check("v4_attention", &p, t, comp_pages ? 0 : (int64_t)pos - W + 1, err);
        if (st != MC_OK) return st;
        int nv = comp_pages ? (pos + 1) / R : 0;
        for (int j = 0; j < ksel; j++) {
            int32_t e = row_i32(sel, t)[j];
            if (e < -1 || e >= nv)
                return mc_err_set(err, MC_ERR_ARG,
                                  "v4_attention: token %lld: sel[%d] = %d is "
                                  "outside the %d entries it sees",
                                  (long long)t, j, (int)e, nv);
        }
        int span = (pos + 1 < W ? pos + 1 : W) + (sel ? ksel : nv);
        most = span > most ? span : most;
    }
    float *score = mc_arena_alloc_n(sa, (size_t)most, sizeof *score);
    const float **rows = mc_arena_alloc_n(sa, (size_t)most, sizeof *rows);
    if (!score || !rows) {
        mc_arena_reset_to(sa, mk);
        return mc_err_set(err, MC_ERR_NOMEM, "v4_attention: out of memory");
    }
    const float *sk = row_f32(sinks, 0);
    for (int64_t t = 0; t < n; t++) {
        int32_t s = i32_at(&ix->seq, t), pos = i32_at(&ix->pos, t);
        int lo = pos - W + 1 > 0 ? pos - W + 1 : 0, nr = 0;
        for (int i = lo; i <= pos; i++)
            rows[nr++] = pg_row(&p, kv_pages, s, i);
        if (comp_pages && sel) {
            for (int j = 0; j < ksel; j++) {
                int32_t e = row_i32(sel, t)[j];
                if (e >= 0) rows[nr++] = pg_row(&p, comp_pages, s, (int64_t)(e + 1) * R - 1);
            }
        } else if (comp_pages) {
            for (int e = 0; e < (pos + 1) / R; e++)
                rows[nr++] = pg_row(&p, comp_pages, s, (int64_t)(e + 1) * R - 1);
        }
        for (int h = 0; h < nh; h++) {
            const float *qh = row_f32(q, t * nh + h);
            float mx = sk[h];
            for (int i = 0; i < nr; i++) {
                score[i] = mc_dot(qh, rows[i], hd) * o->scale;
                mx = score[i] > mx ? score[i] : mx;
            }
            double den = exp((double)sk[h] - mx);
            for (int i = 0; i < nr; i++) {
                score[i] = expf(score[i] - mx);
                den += score[i];
            }
            float inv_den = (float)(1.0 / den);
            float *oh = row_f32(y, t * nh + h);
            memset(oh, 0, (size_t)hd * sizeof *oh);
            for (int i = 0; i < nr; i++)
                mc_axpy(oh, score[i] * inv_den, rows[i], hd);
        }
    }
    mc_arena_reset_to(sa, mk);
    return MC_OK;
}

/* ---- hash routing ---- */

mc_status mc_cpu_v4_hash_route(void *ctx, const mc_tensor *logits, const mc_tensor *tok,
                               const mc_tensor *table, const mc_router_opts *opts, mc_tensor *ids,
                               mc_tensor *weights, mc_err *err) {
    (void)ctx;
    int64_t n = mc_tensor_rows(logits), V = mc_tensor_rows(table);
    int E = (int)mc_tensor_cols(logits), k = opts->k;
    for (int64_t t = 0; t < n; t++) {
        int32_t id = i32_at(tok, t);
        if (id < 0 || id >= V)
            return mc_err_set(err, MC_ERR_ARG,
                              "v4_hash_route: token %lld: id %d is outside the "
                              "table's %lld rows",
                              (long long)t, (int)id, (long long)V);
        const int32_t *r = row_i32(table, id);
        for (int j = 0; j < k; j++)
            if (r[j] < 0 || r[j] >= E)
                return mc_err_set(err, MC_ERR_ARG,
                                  "v4_hash_route: table[%d][%d] = %d is outside "
                                  "[0, %d)",
                                  (int)id, j, (int)r[j], E);
    }
    for (int64_t t = 0; t < n; t++) {
        const int32_t *r = row_i32(table, i32_at(tok, t));
        const float *lg = row_f32(logits, t);
        int32_t *it = row_i32(ids, t);
        float *wt = row_f32(weights, t), sum = 0;
        for (int j = 0; j < k; j++) {
            float x = lg[r[j]], s;
            if (opts->score == MC_ROUTE_SIGMOID) {
                s = mc_sigmoid(x);
            } else {
                float sp = x > 20.0f ? x : log1pf(expf(x));
                s = sqrtf(sp);
            }
            it[j] = r[j];
            wt[j] = s;
            sum += s;
        }
        for (int j = 0; j < k; j++)
            wt[j] = wt[j] / (sum + opts->norm_eps) * opts->scale;
    }
    return MC_OK;
}
