/* test_backend_index.c - DeepSeek-V3.2 sparse attention on the CPU backend:
 * mc_op_indexer_topk over the paged indexer-key cache and mc_op_mla_decode
 * restricted to a selection (mc_attn_opts.sel):
 *   - the indexer against two references over a contiguous copy of each
 *     sequence's keys: the reference's arithmetic (tests/ref/ref_attention.c's
 *     score formula in F32 with mc_dot, then its mc_topk_indices: the same
 *     set, and the op's order is best first by those scores), and scores in
 *     double precision (every kept position scores at least the k-th best);
 *     several sequences, shuffled block tables, block sizes 1, 3 and 16,
 *     tokens of many sequences in random order, k above the visible count
 *     (the rest -1);
 *   - ties: inputs on a coarse grid where F32 and double are exact, so the
 *     op's list must equal the double ranking with ties to the lower
 *     position (the engine's tie rule), and its set mc_topk_indices's;
 *   - mla_decode with a selection (duplicates and -1 included) against a
 *     double reference over the kept positions only; keeping every position
 *     equals no selection bit for bit;
 *   - refusals: the front end names the argument, the backend the token and
 *     the field, and a refused call writes nothing.
 * Prints the first mismatches of each case. */
#include "backend.h"
#include "check.h"
#include "kernels.h"
#include "ref.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnext(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static int rbelow(int n) { return (int)(rnext() % (uint64_t)n); }
static float runi(float lo, float hi)
{
    return lo + (hi - lo) * (float)((rnext() >> 40) / 16777216.0);
}
/* x[i] uniform in [-s, s], or (grid) one of {-s, -s/2, 0, s/2, s}. */
static void fill(float *x, size_t n, float s, int grid)
{
    for (size_t i = 0; i < n; i++)
        x[i] = grid ? (float)(rbelow(5) - 2) * 0.5f * s : runi(-s, s);
}
static void shuffle(int *a, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = rbelow(i + 1), t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

static mc_backend *be;
static mc_buffer *bufs[64];
static int n_bufs;
static void drop_all(void)
{
    for (int i = 0; i < n_bufs; i++)
        mc_buffer_free(bufs[i]);
    n_bufs = 0;
}

/* A contiguous tensor in a buffer of its own, holding host (or zeros). */
static mc_tensor dev(mc_dtype dt, int ndim, const int64_t *shape, const void *host)
{
    mc_err err;
    mc_err_clear(&err);
    size_t bytes = mc_dtype_size(dt);
    for (int i = 0; i < ndim; i++)
        bytes *= (size_t)shape[i];
    mc_tensor t = {0};
    mc_buffer *b = NULL;
    CHECK(n_bufs < 64);
    CHECK(mc_buffer_alloc(be, bytes, &b, &err) == MC_OK);
    bufs[n_bufs++] = b;
    CHECK(mc_tensor_init(&t, b, 0, dt, ndim, shape, &err) == MC_OK);
    if (host)
        CHECK(mc_tensor_upload(&t, host, &err) == MC_OK);
    else
        CHECK(mc_buffer_memset(b, 0, 0, bytes, &err) == MC_OK);
    return t;
}

/* ---- a paged cache of several sequences and one call's tokens ---- */
#define MAX_SEQS 6
#define MAX_LEN 48
#define MAX_TOK 96
typedef struct {
    int n_seqs, bs, n_pages, max_blocks, len[MAX_SEQS];
    int32_t table[MAX_SEQS * MAX_LEN]; /* (n_seqs, max_blocks), -1 past a sequence */
    int n, seq[MAX_TOK], pos[MAX_TOK]; /* token t = (seq[t], pos[t]) */
} cache;

/* Random lengths, shuffled block ids, tokens at random positions of every
 * sequence (its last position among them) in random order. */
static void cache_init(cache *c, int n_seqs, int bs)
{
    memset(c, 0, sizeof *c);
    c->n_seqs = n_seqs;
    c->bs = bs;
    int total = 0;
    for (int i = 0; i < n_seqs; i++) {
        c->len[i] = 1 + rbelow(MAX_LEN);
        int nb = (c->len[i] + bs - 1) / bs;
        c->max_blocks = nb > c->max_blocks ? nb : c->max_blocks;
        total += nb;
    }
    c->n_pages = total + 2; /* two blocks never used */
    int ids[MAX_SEQS * MAX_LEN + 2];
    for (int b = 0; b < c->n_pages; b++)
        ids[b] = b;
    shuffle(ids, c->n_pages);
    int k = 0;
    for (int i = 0; i < n_seqs; i++)
        for (int j = 0; j < c->max_blocks; j++)
            c->table[i * c->max_blocks + j] = j * bs < c->len[i] ? ids[k++] : -1;
    for (int i = 0; i < n_seqs; i++) {
        int m = 1 + rbelow(c->len[i] < 8 ? c->len[i] : 8);
        c->seq[c->n] = i;
        c->pos[c->n++] = c->len[i] - 1;
        for (int j = 1; j < m; j++) {
            c->seq[c->n] = i;
            c->pos[c->n++] = rbelow(c->len[i]);
        }
    }
    int perm[MAX_TOK], s2[MAX_TOK], p2[MAX_TOK];
    for (int t = 0; t < c->n; t++)
        perm[t] = t;
    shuffle(perm, c->n);
    for (int t = 0; t < c->n; t++) {
        s2[t] = c->seq[perm[t]];
        p2[t] = c->pos[perm[t]];
    }
    memcpy(c->seq, s2, sizeof s2);
    memcpy(c->pos, p2, sizeof p2);
}

/* Pages (n_pages, bs, W) holding rows[i] (len[i], W) of each sequence. */
static mc_tensor cache_pages(const cache *c, float *const *rows, int W)
{
    float *pg = calloc((size_t)c->n_pages * c->bs * W, sizeof *pg);
    for (int i = 0; i < c->n_seqs; i++)
        for (int p = 0; p < c->len[i]; p++) {
            int b = c->table[i * c->max_blocks + p / c->bs];
            memcpy(pg + ((size_t)b * c->bs + p % c->bs) * W, rows[i] + (size_t)p * W,
                   (size_t)W * sizeof *pg);
        }
    int64_t sh[3] = {c->n_pages, c->bs, W};
    mc_tensor t = dev(MC_DT_F32, 3, sh, pg);
    free(pg);
    return t;
}

/* The same pages in bf16 (each value rounded to nearest even). */
static mc_tensor cache_pages_bf16(const cache *c, float *const *rows, int W)
{
    uint16_t *pg = calloc((size_t)c->n_pages * c->bs * W, sizeof *pg);
    for (int i = 0; i < c->n_seqs; i++)
        for (int p = 0; p < c->len[i]; p++) {
            int b = c->table[i * c->max_blocks + p / c->bs];
            for (int e = 0; e < W; e++)
                pg[((size_t)b * c->bs + p % c->bs) * W + e] =
                    mc_f32_to_bf16(rows[i][(size_t)p * W + e]);
        }
    int64_t sh[3] = {c->n_pages, c->bs, W};
    mc_tensor t = dev(MC_DT_BF16, 3, sh, pg);
    free(pg);
    return t;
}

static mc_kv_index cache_index(const cache *c)
{
    mc_kv_index ix;
    int64_t bt[2] = {c->n_seqs, c->max_blocks}, nn[1] = {c->n};
    ix.block_table = dev(MC_DT_I32, 2, bt, c->table);
    int32_t s[MAX_TOK], p[MAX_TOK];
    for (int t = 0; t < c->n; t++) {
        s[t] = c->seq[t];
        p[t] = c->pos[t];
    }
    ix.seq = dev(MC_DT_I32, 1, nn, s);
    ix.pos = dev(MC_DT_I32, 1, nn, p);
    return ix;
}

/* ---- the indexer against the engine's arithmetic and a double reference ---- */

/* Engine scores of token (q (ih, id), w [ih]) over keys (S, id), as indexer_select. */
static void engine_scores(const float *q, const float *w, const float *keys, int S, int ih,
                          int id, float ss, float ws, float *score)
{
    for (int p = 0; p < S; p++) {
        float acc = 0;
        for (int h = 0; h < ih; h++) {
            float v = mc_dot(q + (size_t)h * id, keys + (size_t)p * id, id) * ss;
            acc += (v > 0 ? v : 0) * w[h] * ws;
        }
        score[p] = acc;
    }
}

static double ref_score(const float *q, const float *w, const float *key, int ih, int id,
                        double ss, double ws)
{
    double acc = 0;
    for (int h = 0; h < ih; h++) {
        double v = 0;
        for (int i = 0; i < id; i++)
            v += (double)q[(size_t)h * id + i] * key[i];
        v *= ss;
        acc += (v > 0 ? v : 0) * w[h] * ws;
    }
    return acc;
}

static const double *cmp_score;
static int by_rank(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    if (cmp_score[x] != cmp_score[y])
        return cmp_score[x] > cmp_score[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

/* One case: n_seqs sequences, block size bs, ih heads of id, keep k. grid:
 * exact inputs with many ties. */
static void index_case(int n_seqs, int bs, int ih, int id, int k, int grid)
{
    char name[96];
    snprintf(name, sizeof name, "indexer seqs=%d bs=%d ih=%d id=%d k=%d%s", n_seqs, bs, ih, id,
             k, grid ? " grid" : "");
    cache c;
    cache_init(&c, n_seqs, bs);
    float *keys[MAX_SEQS];
    for (int i = 0; i < n_seqs; i++) {
        keys[i] = malloc((size_t)c.len[i] * id * sizeof(float));
        fill(keys[i], (size_t)c.len[i] * id, 1.0f, grid);
    }
    float *q = malloc((size_t)c.n * ih * id * sizeof *q), *w = malloc((size_t)c.n * ih * sizeof *w);
    fill(q, (size_t)c.n * ih * id, 1.0f, grid);
    fill(w, (size_t)c.n * ih, 2.0f, grid);
    float ss = grid ? 0.25f : 1.0f / sqrtf((float)id), ws = grid ? 0.5f : 1.0f / sqrtf((float)ih);
    mc_tensor kp = cache_pages(&c, keys, id);
    mc_kv_index ix = cache_index(&c);
    int64_t qs[3] = {c.n, ih, id}, wsh[2] = {c.n, ih}, ssh[2] = {c.n, k};
    mc_tensor tq = dev(MC_DT_F32, 3, qs, q), tw = dev(MC_DT_F32, 2, wsh, w);
    mc_tensor tsel = dev(MC_DT_I32, 2, ssh, NULL);
    mc_indexer_opts o = {.k = k, .score_scale = ss, .weight_scale = ws};
    mc_err err;
    mc_err_clear(&err);
    CHECK(mc_op_indexer_topk(be, &tq, &tw, &kp, &ix, &o, &tsel, &err) == MC_OK);
    int32_t *sel = malloc((size_t)c.n * k * sizeof *sel);
    CHECK(mc_tensor_download(&tsel, sel, &err) == MC_OK);

    float fs[MAX_LEN];
    double ds[MAX_LEN];
    int eng[MAX_LEN], order[MAX_LEN], bad = 0;
    unsigned char taken[MAX_LEN], in_eng[MAX_LEN];
    for (int t = 0; t < c.n; t++) {
        int S = c.pos[t] + 1, m = k < S ? k : S, ok = 1;
        const float *qt = q + (size_t)t * ih * id, *wt = w + (size_t)t * ih;
        const int32_t *st = sel + (size_t)t * k;
        engine_scores(qt, wt, keys[c.seq[t]], S, ih, id, ss, ws, fs);
        int cnt = mc_topk_indices(fs, S, k, eng, taken);
        memset(in_eng, 0, sizeof in_eng);
        for (int j = 0; j < cnt; j++)
            in_eng[eng[j]] = 1;
        for (int p = 0; p < S; p++) {
            ds[p] = ref_score(qt, wt, keys[c.seq[t]] + (size_t)p * id, ih, id, ss, ws);
            order[p] = p;
        }
        cmp_score = ds;
        qsort(order, (size_t)S, sizeof *order, by_rank);
        double kth = ds[order[m - 1]], tol = 1e-5 * (1 + fabs(kth));
        ok &= cnt == m;
        for (int j = 0; j < m; j++) {
            int p = st[j];
            if (p < 0 || p >= S || !in_eng[p]) {
                ok = 0;
                continue;
            }
            in_eng[p] = 0; /* each once */
            ok &= ds[p] >= kth - tol;
            if (j > 0 && st[j - 1] >= 0 && st[j - 1] < S) /* best first, ties to the lower */
                ok &= fs[st[j - 1]] > fs[p] || (fs[st[j - 1]] == fs[p] && st[j - 1] < p);
            if (grid)
                ok &= p == order[j]; /* exact: the double ranking itself */
        }
        for (int j = m; j < k; j++)
            ok &= st[j] == -1;
        if (!ok && bad++ < 3) {
            fprintf(stderr, "  %s: token %d (seq %d pos %d), m = %d:\n   got ", name, t, c.seq[t],
                    c.pos[t], m);
            for (int j = 0; j < k && j < 12; j++)
                fprintf(stderr, " %d", st[j]);
            fprintf(stderr, "\n   want");
            for (int j = 0; j < m && j < 12; j++)
                fprintf(stderr, " %d(%.6g)", order[j], ds[order[j]]);
            fprintf(stderr, "\n");
        }
    }
    check_count++;
    if (bad) {
        check_failures++;
        fprintf(stderr, "%s: %d of %d tokens differ\n", name, bad, c.n);
    }
    /* key pages in bf16: the selection over F32 pages of the rounded keys, exactly */
    mc_tensor kb = cache_pages_bf16(&c, keys, id);
    for (int i = 0; i < n_seqs; i++)
        for (size_t e = 0; e < (size_t)c.len[i] * id; e++)
            keys[i][e] = mc_bf16_to_f32(mc_f32_to_bf16(keys[i][e]));
    mc_tensor kr = cache_pages(&c, keys, id);
    int32_t *selb = malloc((size_t)c.n * k * sizeof *selb), *selr = malloc((size_t)c.n * k * sizeof *selr);
    CHECK(mc_op_indexer_topk(be, &tq, &tw, &kb, &ix, &o, &tsel, &err) == MC_OK);
    CHECK(mc_tensor_download(&tsel, selb, &err) == MC_OK);
    CHECK(mc_op_indexer_topk(be, &tq, &tw, &kr, &ix, &o, &tsel, &err) == MC_OK);
    CHECK(mc_tensor_download(&tsel, selr, &err) == MC_OK);
    bad = 0;
    for (int t = 0; t < c.n * k; t++)
        if (selb[t] != selr[t] && bad++ < 3)
            fprintf(stderr, "  %s bf16 keys: token %d entry %d: %d, over rounded f32 keys %d\n",
                    name, t / k, t % k, selb[t], selr[t]);
    check_count++;
    if (bad) {
        check_failures++;
        fprintf(stderr, "%s: bf16 key pages: %d entries differ\n", name, bad);
    }
    free(selb);
    free(selr);
    for (int i = 0; i < n_seqs; i++)
        free(keys[i]);
    free(q);
    free(w);
    free(sel);
    drop_all();
}

/* ---- mla_decode restricted to a selection ---- */

static void mla_sel_case(int bs, int k, int nh)
{
    char name[64];
    snprintf(name, sizeof name, "mla_decode sel bs=%d k=%d nh=%d", bs, k, nh);
    int lr = 16, rd = 8;
    cache c;
    cache_init(&c, 4, bs);
    float *lat[MAX_SEQS], *pe[MAX_SEQS];
    for (int i = 0; i < c.n_seqs; i++) {
        lat[i] = malloc((size_t)c.len[i] * lr * sizeof(float));
        pe[i] = malloc((size_t)c.len[i] * rd * sizeof(float));
        fill(lat[i], (size_t)c.len[i] * lr, 1.0f, 0);
        fill(pe[i], (size_t)c.len[i] * rd, 1.0f, 0);
    }
    float *ql = malloc((size_t)c.n * nh * lr * sizeof *ql);
    float *qp = malloc((size_t)c.n * nh * rd * sizeof *qp);
    fill(ql, (size_t)c.n * nh * lr, 1.0f, 0);
    fill(qp, (size_t)c.n * nh * rd, 1.0f, 0);
    /* selections: random kept positions, one listed twice, some -1 */
    int32_t *sel = malloc((size_t)c.n * k * sizeof *sel);
    for (int t = 0; t < c.n; t++)
        for (int j = 0; j < k; j++)
            sel[(size_t)t * k + j] = j == 0 ? c.pos[t] : rbelow(4) == 0 ? -1 : rbelow(c.pos[t] + 1);
    mc_tensor lp = cache_pages(&c, lat, lr), pp = cache_pages(&c, pe, rd);
    mc_kv_index ix = cache_index(&c);
    int64_t qls[3] = {c.n, nh, lr}, qps[3] = {c.n, nh, rd}, ssh[2] = {c.n, k};
    mc_tensor tql = dev(MC_DT_F32, 3, qls, ql), tqp = dev(MC_DT_F32, 3, qps, qp);
    mc_tensor tsel = dev(MC_DT_I32, 2, ssh, sel), ty = dev(MC_DT_F32, 3, qls, NULL);
    mc_tensor ty2 = dev(MC_DT_F32, 3, qls, NULL);
    float scale = 0.3f;
    mc_attn_opts o = {.scale = scale, .sel = &tsel};
    mc_err err;
    mc_err_clear(&err);
    CHECK(mc_op_mla_decode(be, &tql, &tqp, &lp, &pp, &ix, &o, &ty, &err) == MC_OK);
    float *y = malloc((size_t)c.n * nh * lr * sizeof *y);
    CHECK(mc_tensor_download(&ty, y, &err) == MC_OK);
    double *want = calloc((size_t)c.n * nh * lr, sizeof *want), sc[MAX_LEN];
    unsigned char keep[MAX_LEN];
    for (int t = 0; t < c.n; t++) {
        int S = c.pos[t] + 1, s = c.seq[t];
        memset(keep, 0, sizeof keep);
        for (int j = 0; j < k; j++)
            if (sel[(size_t)t * k + j] >= 0)
                keep[sel[(size_t)t * k + j]] = 1;
        for (int h = 0; h < nh; h++) {
            const float *a = ql + ((size_t)t * nh + h) * lr, *b = qp + ((size_t)t * nh + h) * rd;
            double mx = -INFINITY, sum = 0;
            for (int p = 0; p < S; p++) {
                if (!keep[p])
                    continue;
                double v = 0;
                for (int i = 0; i < lr; i++)
                    v += (double)a[i] * lat[s][(size_t)p * lr + i];
                for (int i = 0; i < rd; i++)
                    v += (double)b[i] * pe[s][(size_t)p * rd + i];
                sc[p] = v * scale;
                mx = sc[p] > mx ? sc[p] : mx;
            }
            for (int p = 0; p < S; p++)
                if (keep[p])
                    sum += (sc[p] = exp(sc[p] - mx));
            double *o_ = want + ((size_t)t * nh + h) * lr;
            for (int p = 0; p < S; p++)
                if (keep[p])
                    for (int i = 0; i < lr; i++)
                        o_[i] += sc[p] / sum * lat[s][(size_t)p * lr + i];
        }
    }
    int bad = 0;
    for (size_t i = 0; i < (size_t)c.n * nh * lr; i++)
        if (!(fabs(y[i] - want[i]) <= 1e-6 + 1e-5 * fabs(want[i])) && bad++ < 5)
            fprintf(stderr, "  %s: [%zu] (token %zu) got %.9g want %.9g\n", name, i,
                    i / ((size_t)nh * lr), y[i], want[i]);
    check_count++;
    if (bad) {
        check_failures++;
        fprintf(stderr, "%s: %d values differ\n", name, bad);
    }
    /* keeping every position (k >= S, in any order) equals no selection, bit for bit */
    int kk = MAX_LEN;
    int32_t *all = malloc((size_t)c.n * kk * sizeof *all);
    for (int t = 0; t < c.n; t++)
        for (int j = 0; j < kk; j++)
            all[(size_t)t * kk + j] = j <= c.pos[t] ? c.pos[t] - j : -1;
    int64_t ash[2] = {c.n, kk};
    mc_tensor tall = dev(MC_DT_I32, 2, ash, all);
    o.sel = &tall;
    CHECK(mc_op_mla_decode(be, &tql, &tqp, &lp, &pp, &ix, &o, &ty, &err) == MC_OK);
    o.sel = NULL;
    CHECK(mc_op_mla_decode(be, &tql, &tqp, &lp, &pp, &ix, &o, &ty2, &err) == MC_OK);
    float *y2 = malloc((size_t)c.n * nh * lr * sizeof *y2);
    CHECK(mc_tensor_download(&ty, y, &err) == MC_OK);
    CHECK(mc_tensor_download(&ty2, y2, &err) == MC_OK);
    CHECK(memcmp(y, y2, (size_t)c.n * nh * lr * sizeof *y) == 0);
    for (int i = 0; i < c.n_seqs; i++) {
        free(lat[i]);
        free(pe[i]);
    }
    free(ql);
    free(qp);
    free(sel);
    free(all);
    free(y);
    free(y2);
    free(want);
    drop_all();
}

/* ---- refusals ---- */

/* The call was refused with a message holding needle; clears err for the next. */
static int refused(mc_status st, mc_err *err, const char *needle)
{
    int ok = st == MC_ERR_ARG && strstr(err->msg, needle) != NULL;
    if (!ok)
        fprintf(stderr, "  want a refusal naming '%s', got status %d: %s\n", needle, (int)st,
                err->msg);
    mc_err_clear(err);
    return ok;
}

static void refusals(void)
{
    cache c;
    cache_init(&c, 3, 3);
    int ih = 2, id = 4, k = 5;
    float *keys[MAX_SEQS];
    for (int i = 0; i < c.n_seqs; i++) {
        keys[i] = malloc((size_t)c.len[i] * id * sizeof(float));
        fill(keys[i], (size_t)c.len[i] * id, 1.0f, 0);
    }
    mc_tensor kp = cache_pages(&c, keys, id);
    mc_kv_index ix = cache_index(&c);
    int64_t qs[3] = {c.n, ih, id}, wsh[2] = {c.n, ih}, ssh[2] = {c.n, k}, bad_s[2] = {c.n, k + 1};
    mc_tensor tq = dev(MC_DT_F32, 3, qs, NULL), tw = dev(MC_DT_F32, 2, wsh, NULL);
    mc_tensor tsel = dev(MC_DT_I32, 2, ssh, NULL), tsel6 = dev(MC_DT_I32, 2, bad_s, NULL);
    mc_indexer_opts o = {.k = k, .score_scale = 0.5f, .weight_scale = 0.5f};
    mc_err err;
    mc_err_clear(&err);
    CHECK(refused(mc_op_indexer_topk(be, &tq, &tw, &kp, &ix, NULL, &tsel, &err), &err,
                  "indexer_topk: opt"));
    mc_indexer_opts o0 = o;
    o0.k = 0;
    CHECK(refused(mc_op_indexer_topk(be, &tq, &tw, &kp, &ix, &o0, &tsel, &err), &err, "opt.k"));
    o0 = o;
    o0.score_scale = NAN;
    CHECK(refused(mc_op_indexer_topk(be, &tq, &tw, &kp, &ix, &o0, &tsel, &err), &err,
                  "opt.score_scale"));
    mc_tensor q2 = tq;
    int64_t q2s[2] = {c.n, ih * id};
    CHECK(mc_tensor_reshape(&tq, 2, q2s, &q2, &err) == MC_OK);
    CHECK(refused(mc_op_indexer_topk(be, &q2, &tw, &kp, &ix, &o, &tsel, &err), &err,
                  "indexer_topk: iq"));
    mc_tensor w1;
    CHECK(mc_tensor_view_cols(&tw, 0, 1, &w1, &err) == MC_OK);
    CHECK(refused(mc_op_indexer_topk(be, &tq, &w1, &kp, &ix, &o, &tsel, &err), &err,
                  "indexer_topk: w"));
    CHECK(refused(mc_op_indexer_topk(be, &tq, &tw, &kp, &ix, &o, &tsel6, &err), &err,
                  "indexer_topk: sel"));
    mc_tensor kp3;
    CHECK(mc_tensor_view_cols(&kp, 0, 3, &kp3, &err) == MC_OK);
    CHECK(refused(mc_op_indexer_topk(be, &tq, &tw, &kp3, &ix, &o, &tsel, &err), &err,
                  "indexer_topk: iq"));
    mc_tensor alias; /* sel over iq's bytes */
    CHECK(mc_tensor_init(&alias, tq.buf, 0, MC_DT_I32, 2, ssh, &err) == MC_OK);
    CHECK(refused(mc_op_indexer_topk(be, &tq, &tw, &kp, &ix, &o, &alias, &err), &err,
                  "indexer_topk: sel"));
    mc_kv_index ixb = ix; /* seq of the wrong length */
    CHECK(mc_tensor_view_rows(&ix.seq, 0, c.n - 1, &ixb.seq, &err) == MC_OK);
    CHECK(refused(mc_op_indexer_topk(be, &tq, &tw, &kp, &ixb, &o, &tsel, &err), &err,
                  "indexer_topk: ix.seq"));

    /* backend: contents, and nothing written on refusal */
    int32_t marker[MAX_TOK * 5], got[MAX_TOK * 5];
    for (int i = 0; i < c.n * k; i++)
        marker[i] = 7777;
    CHECK(mc_tensor_upload(&tsel, marker, &err) == MC_OK);
    int32_t v;
    int t_last = c.n - 1;
    v = c.max_blocks * c.bs; /* position past the table */
    CHECK(mc_buffer_upload(ix.pos.buf, (size_t)t_last * 4, &v, 4, &err) == MC_OK);
    CHECK(refused(mc_op_indexer_topk(be, &tq, &tw, &kp, &ix, &o, &tsel, &err), &err, "pos ="));
    v = c.pos[t_last];
    CHECK(mc_buffer_upload(ix.pos.buf, (size_t)t_last * 4, &v, 4, &err) == MC_OK);
    v = c.n_seqs; /* sequence past the table */
    CHECK(mc_buffer_upload(ix.seq.buf, (size_t)t_last * 4, &v, 4, &err) == MC_OK);
    CHECK(refused(mc_op_indexer_topk(be, &tq, &tw, &kp, &ix, &o, &tsel, &err), &err, "seq ="));
    v = c.seq[t_last];
    CHECK(mc_buffer_upload(ix.seq.buf, (size_t)t_last * 4, &v, 4, &err) == MC_OK);
    v = c.n_pages; /* a block past the cache, in the block of the last token's position */
    size_t off = ((size_t)c.seq[t_last] * c.max_blocks + c.pos[t_last] / c.bs) * 4;
    CHECK(mc_buffer_upload(ix.block_table.buf, off, &v, 4, &err) == MC_OK);
    CHECK(refused(mc_op_indexer_topk(be, &tq, &tw, &kp, &ix, &o, &tsel, &err), &err,
                  "block_table["));
    CHECK(mc_tensor_download(&tsel, got, &err) == MC_OK);
    CHECK(memcmp(got, marker, (size_t)c.n * k * 4) == 0);
    v = c.table[c.seq[t_last] * c.max_blocks + c.pos[t_last] / c.bs];
    CHECK(mc_buffer_upload(ix.block_table.buf, off, &v, 4, &err) == MC_OK);
    CHECK(mc_op_indexer_topk(be, &tq, &tw, &kp, &ix, &o, &tsel, &err) == MC_OK);

    /* mla_decode with a selection: one past the token's position, none kept,
     * and GQA attention refuses a selection */
    int lr = 4, nh = 2; /* the rope dims are 4 too: both page tensors are kp */
    int64_t qls[3] = {c.n, nh, lr}, ks4[4] = {c.n_pages, c.bs, 1, id};
    mc_tensor ql = dev(MC_DT_F32, 3, qls, NULL), qp = dev(MC_DT_F32, 3, qls, NULL);
    mc_tensor y = dev(MC_DT_F32, 3, qls, NULL), sel = dev(MC_DT_I32, 2, ssh, NULL);
    int32_t s[MAX_TOK * 5];
    for (int i = 0; i < c.n * k; i++)
        s[i] = -1;
    for (int t = 0; t < c.n; t++)
        s[t * k] = c.pos[t];
    s[t_last * k + 2] = c.pos[t_last] + 1;
    CHECK(mc_tensor_upload(&sel, s, &err) == MC_OK);
    mc_attn_opts ao = {.scale = 1.0f, .sel = &sel};
    CHECK(refused(mc_op_mla_decode(be, &ql, &qp, &kp, &kp, &ix, &ao, &y, &err), &err,
                  "opt.sel["));
    s[t_last * k + 2] = -1;
    s[t_last * k] = -1;
    CHECK(mc_tensor_upload(&sel, s, &err) == MC_OK);
    CHECK(refused(mc_op_mla_decode(be, &ql, &qp, &kp, &kp, &ix, &ao, &y, &err), &err,
                  "keeps no position"));
    mc_tensor sel1; /* one row short */
    CHECK(mc_tensor_view_rows(&tsel, 0, c.n - 1, &sel1, &err) == MC_OK);
    ao.sel = &sel1;
    CHECK(refused(mc_op_mla_decode(be, &ql, &qp, &kp, &kp, &ix, &ao, &y, &err), &err,
                  "mla_decode: opt.sel"));
    mc_tensor k4;
    CHECK(mc_tensor_reshape(&kp, 4, ks4, &k4, &err) == MC_OK);
    int64_t gq[3] = {c.n, 1, id};
    mc_tensor gqa_q = dev(MC_DT_F32, 3, gq, NULL), gqa_y = dev(MC_DT_F32, 3, gq, NULL);
    ao.sel = &sel;
    CHECK(refused(mc_op_attention(be, &gqa_q, &k4, &k4, &ix, &ao, &gqa_y, &err), &err,
                  "attention: opt.sel"));
    for (int i = 0; i < c.n_seqs; i++)
        free(keys[i]);
    drop_all();
}

int main(void)
{
    mc_err err;
    mc_err_clear(&err);
    if (mc_backend_cpu_init(&be, &err) != MC_OK) {
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        return 1;
    }
    static const int bss[3] = {1, 3, 16};
    for (int threads = 1; threads <= 3; threads += 2) /* the ops' pool: one thread, three */
    for (int b = 0; b < 3; b++) {
        mc_kernels_set_threads(threads);
        index_case(5, bss[b], 4, 16, 8, 0);     /* random scores */
        index_case(4, bss[b], 3, 4, 6, 1);      /* coarse grid: many exact ties */
        index_case(3, bss[b], 2, 8, 64, 0);     /* k above every visible count */
        index_case(6, bss[b], 1, 2, 1, 1);      /* k = 1, ties */
        index_case(6, bss[b], 8, 64, 16, 0);    /* enough work for the pool */
        mla_sel_case(bss[b], 6, 3);
        mla_sel_case(bss[b], 6, 32); /* enough work for the pool */
    }
    refusals();
    mc_backend_free(be);
    return check_report("test_backend_index");
}
