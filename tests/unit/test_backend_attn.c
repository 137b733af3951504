/* test_backend_attn.c - the paged-KV-cache ops of backend.h on the CPU
 * backend (mc_op_kv_write, mc_op_attention, mc_op_mla_decode):
 *   - against a reference computed here in double precision with plain
 *     loops over a contiguous copy of each sequence's K / V (latent / rope
 *     key): several sequences of different lengths, shuffled block ids,
 *     block sizes 1, 3 and 16, steps that mix prefill chunks and single
 *     decode tokens of many sequences in one call, GQA with nh = nkv and
 *     nh = 4 nkv, a V head size other than the K one, Llama 4 chunked
 *     attention, per-token query scales (NoPE temperature), MLA;
 *   - against the per-call reference (tests/ref/ref_attention.c: mc_attn_gqa,
 *     mc_attn_mla on a contiguous per-sequence cache), run sequence by
 *     sequence in the same chunks, with selector weights that make its
 *     projections exact, so that both must agree to the bit (1e-6 relative
 *     where the temperature is applied to q there and to the score here);
 *   - a cache in bf16 (BF16 pages) against F32 pages holding the same
 *     values rounded to bf16, to the bit, in every case and step;
 *   - all of it on one thread and on three (the (token, head) pairs split
 *     over the pool), with cases long enough to take the pool;
 *   - refusals: the front end names the argument, the backend names the
 *     token and the field, and a refused write changes nothing.
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

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t rnext(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static int rint_below(int n) { return (int)(rnext() % (uint64_t)n); }
static float runi(float lo, float hi)
{
    return lo + (hi - lo) * (float)((rnext() >> 40) / 16777216.0);
}
static void fill(float *x, size_t n, float s)
{
    for (size_t i = 0; i < n; i++)
        x[i] = runi(-s, s);
}
static void shuffle(int *a, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = rint_below(i + 1), t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

static mc_backend *be;

/* Buffers of the current case, freed by drop_all(). */
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

/* |got - want| <= atol + rtol |want|; prints up to 5 mismatches. */
static void compare(const char *what, const float *got, const double *want, size_t n,
                    double rtol, double atol)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= atol + rtol * fabs(want[i]))) {
            if (bad < 5)
                fprintf(stderr, "  %s: [%zu] got %.9g want %.9g\n", what, i, got[i], want[i]);
            bad++;
        }
    check_count++;
    if (bad) {
        check_failures++;
        fprintf(stderr, "%s: %d of %zu values differ\n", what, bad, n);
    }
}

/* x rounded to bf16 and back (a KV cache in bf16 holds these values). */
static float *bf16_round(const float *x, size_t n)
{
    float *r = malloc(n * sizeof *r);
    for (size_t i = 0; r && i < n; i++)
        r[i] = mc_bf16_to_f32(mc_f32_to_bf16(x[i]));
    return r;
}

/* got against want to the bit (+-0 alike), the first mismatches printed. */
static void compare_exact(const char *what, const float *got, const float *want, size_t n)
{
    double *w = malloc(n * sizeof *w);
    for (size_t i = 0; w && i < n; i++)
        w[i] = want[i];
    CHECK(w != NULL);
    if (w)
        compare(what, got, w, n, 0, 0);
    free(w);
}

/* ---- a batch schedule over several sequences ----
 * Each sequence i has len[i] positions, a block table of shuffled pool block
 * ids, and advances by a random chunk per step (a prefill chunk or one
 * decode token); one step holds every unfinished sequence, in random order. */
#define MAX_SEQS 8
typedef struct {
    int n_seqs, bs, n_pages, max_blocks;
    int len[MAX_SEQS], done[MAX_SEQS];
    int32_t table[MAX_SEQS * 64]; /* (n_seqs, max_blocks) */
    /* the current step: n tokens, token t = (seq[t], pos[t]); chunk of each sequence */
    int n, seq[512], pos[512], c0[MAX_SEQS], cn[MAX_SEQS];
} sched;

static void sched_init(sched *s, int n_seqs, const int *len, int bs)
{
    memset(s, 0, sizeof *s);
    s->n_seqs = n_seqs;
    s->bs = bs;
    int total = 0;
    for (int i = 0; i < n_seqs; i++) {
        s->len[i] = len[i];
        int nb = (len[i] + bs - 1) / bs;
        s->max_blocks = nb > s->max_blocks ? nb : s->max_blocks;
        total += nb;
    }
    s->n_pages = total + 3; /* some blocks never used */
    int ids[1024];
    for (int b = 0; b < s->n_pages; b++)
        ids[b] = b;
    shuffle(ids, s->n_pages);
    int k = 0;
    for (int i = 0; i < n_seqs; i++)
        for (int j = 0; j < s->max_blocks; j++)
            s->table[i * s->max_blocks + j] = j * bs < len[i] ? ids[k++] : -1;
}

/* Picks the next step; 0 when every sequence is done. */
static int sched_next(sched *s, int max_chunk)
{
    int order[MAX_SEQS];
    for (int i = 0; i < s->n_seqs; i++)
        order[i] = i;
    shuffle(order, s->n_seqs);
    s->n = 0;
    for (int k = 0; k < s->n_seqs; k++) {
        int i = order[k], left = s->len[i] - s->done[i];
        s->cn[i] = 0;
        if (left == 0)
            continue;
        int c = rint_below(3) == 0 ? 1 : 1 + rint_below(max_chunk); /* decode or prefill */
        c = c < left ? c : left;
        s->c0[i] = s->n;
        s->cn[i] = c;
        for (int j = 0; j < c; j++) {
            s->seq[s->n] = i;
            s->pos[s->n] = s->done[i] + j;
            s->n++;
        }
        s->done[i] += c;
    }
    return s->n > 0;
}

/* The step's index tensors. */
static mc_kv_index sched_index(const sched *s)
{
    mc_kv_index ix;
    int64_t bt[2] = {s->n_seqs, s->max_blocks}, n[1] = {s->n};
    int32_t seq[512], pos[512];
    for (int t = 0; t < s->n; t++) {
        seq[t] = s->seq[t];
        pos[t] = s->pos[t];
    }
    ix.block_table = dev(MC_DT_I32, 2, bt, s->table);
    ix.seq = dev(MC_DT_I32, 1, n, seq);
    ix.pos = dev(MC_DT_I32, 1, n, pos);
    return ix;
}

/* First position token t sees. */
static int lo_of(int pos, int chunk) { return chunk > 0 ? pos - pos % chunk : 0; }

/* Llama 4 NoPE temperature of position p, as worker/attention.c computes it. */
static float nope_temp(int p)
{
    return (float)(log1p(floor((p + 1.0) / 8.0)) * 0.1 + 1.0);
}


/* ---- GQA ---- */

typedef struct {
    const char *name;
    int n_seqs, len[MAX_SEQS], bs, nh, nkv, hd, vd, chunk, nope, max_chunk;
} gqa_case;

/* The engine's current path on one sequence: a model of one layer whose
 * projections select parts of x = [q | k | v] (exact), so that
 * mc_attn_gqa's output rows are its attention rows (wo selects them too). */
typedef struct {
    mc_model *m;
    mc_layer_w w;
    float *wq, *wk, *wv, *wo, *cs, *sn;
    int hx;
} gqa_worker;

static float *selector(int rows, int cols, int c0)
{
    float *w = calloc((size_t)rows * cols, sizeof *w);
    for (int o = 0; w && o < rows && c0 + o < cols; o++)
        w[(size_t)o * cols + c0 + o] = 1.0f;
    return w;
}

static mc_mat mat_f32(const float *w, int rows, int cols)
{
    return (mc_mat){.dtype = MC_DT_F32, .rows = rows, .cols = cols, .row_stride = (size_t)cols,
                    .data = w};
}

static int gqa_worker_init(gqa_worker *g, const gqa_case *c, float scale)
{
    memset(g, 0, sizeof *g);
    int qw = c->nh * c->hd, kw = c->nkv * c->hd;
    g->hx = qw + 2 * kw;
    g->m = calloc(1, sizeof *g->m);
    g->wq = selector(qw, g->hx, 0);
    g->wk = selector(kw, g->hx, qw);
    g->wv = selector(kw, g->hx, qw + kw);
    g->wo = selector(g->hx, qw, 0);
    g->cs = malloc(512 * (size_t)c->hd / 2 * sizeof *g->cs);
    g->sn = calloc(512 * (size_t)c->hd / 2, sizeof *g->sn);
    if (!g->m || !g->wq || !g->wk || !g->wv || !g->wo || !g->cs || !g->sn)
        return 0;
    for (size_t i = 0; i < 512 * (size_t)c->hd / 2; i++)
        g->cs[i] = 1.0f; /* RoPE by angle 0: exact identity, keeps the chunked path on */
    mc_model_desc *d = &g->m->d;
    d->hidden = g->hx;
    d->n_heads = c->nh;
    d->n_kv_heads = c->nkv;
    d->head_dim = c->hd;
    d->rope.dim = c->hd;
    d->rope.style = MC_ROPE_HALF;
    d->layer_rope[0] = !c->nope;
    d->attn_chunk = c->chunk;
    d->attn_scale = scale;
    d->attn_temp_tuning = c->nope;
    d->attn_floor_scale = 8.0;
    d->attn_temp_scale = 0.1;
    d->norm_eps = 1e-6f;
    g->m->lay.n_heads = c->nh;
    g->m->lay.n_kv_heads = c->nkv;
    g->w.wq = mat_f32(g->wq, qw, g->hx);
    g->w.wk = mat_f32(g->wk, kw, g->hx);
    g->w.wv = mat_f32(g->wv, kw, g->hx);
    g->w.wo = mat_f32(g->wo, g->hx, qw);
    return 1;
}

static void gqa_worker_free(gqa_worker *g)
{
    free(g->m);
    free(g->wq);
    free(g->wk);
    free(g->wv);
    free(g->wo);
    free(g->cs);
    free(g->sn);
}

static void run_gqa(const gqa_case *c)
{
    mc_err err;
    mc_err_clear(&err);
    sched s;
    sched_init(&s, c->n_seqs, c->len, c->bs);
    int nh = c->nh, nkv = c->nkv, hd = c->hd, vd = c->vd, grp = nh / nkv;
    float scale = 1.0f / sqrtf((float)hd);
    /* each sequence's K and V, contiguous: (len, nkv, hd), (len, nkv, vd) */
    float *K[MAX_SEQS], *V[MAX_SEQS], *wk[MAX_SEQS], *wv[MAX_SEQS];
    mc_kv kvs[MAX_SEQS];
    for (int i = 0; i < c->n_seqs; i++) {
        K[i] = malloc((size_t)c->len[i] * nkv * hd * sizeof(float));
        V[i] = malloc((size_t)c->len[i] * nkv * vd * sizeof(float));
        wk[i] = malloc((size_t)c->len[i] * nkv * hd * sizeof(float));
        wv[i] = malloc((size_t)c->len[i] * nkv * vd * sizeof(float));
        fill(K[i], (size_t)c->len[i] * nkv * hd, 1.0f);
        fill(V[i], (size_t)c->len[i] * nkv * vd, 1.0f);
        kvs[i] = (mc_kv){.cap = c->len[i], .n_layers = 1, .k_width = nkv * hd,
                         .v_width = nkv * vd, .k = &wk[i], .v = &wv[i]};
    }
    gqa_worker gw;
    int worker = vd == hd && gqa_worker_init(&gw, c, scale);
    int64_t pshape_k[4] = {s.n_pages, c->bs, nkv, hd}, pshape_v[4] = {s.n_pages, c->bs, nkv, vd};
    mc_tensor kp = dev(MC_DT_F32, 4, pshape_k, NULL), vp = dev(MC_DT_F32, 4, pshape_v, NULL);
    /* the same cache in bf16, and in f32 holding the values rounded to bf16 */
    mc_tensor kb = dev(MC_DT_BF16, 4, pshape_k, NULL), vb = dev(MC_DT_BF16, 4, pshape_v, NULL);
    mc_tensor kr = dev(MC_DT_F32, 4, pshape_k, NULL), vr = dev(MC_DT_F32, 4, pshape_v, NULL);
    int base = n_bufs; /* buffers past this one are the step's */
    char what[160];
    for (int step = 0; sched_next(&s, c->max_chunk); step++) {
        int n = s.n;
        float *q = malloc((size_t)n * nh * hd * sizeof *q), qs[512];
        float *ks = malloc((size_t)n * nkv * hd * sizeof *ks);
        float *vs = malloc((size_t)n * nkv * vd * sizeof *vs);
        float *y = malloc((size_t)n * nh * vd * sizeof *y);
        double *want = malloc((size_t)n * nh * vd * sizeof *want), sc[512];
        fill(q, (size_t)n * nh * hd, 1.0f);
        for (int t = 0; t < n; t++) {
            int i = s.seq[t], p = s.pos[t];
            memcpy(ks + (size_t)t * nkv * hd, K[i] + (size_t)p * nkv * hd,
                   (size_t)nkv * hd * sizeof *ks);
            memcpy(vs + (size_t)t * nkv * vd, V[i] + (size_t)p * nkv * vd,
                   (size_t)nkv * vd * sizeof *vs);
            qs[t] = c->nope ? nope_temp(p) : 1.0f;
        }
        mc_kv_index ix = sched_index(&s);
        int64_t sk[3] = {n, nkv, hd}, sv[3] = {n, nkv, vd}, sq[3] = {n, nh, hd},
                sy[3] = {n, nh, vd}, sn1[1] = {n};
        mc_tensor tk = dev(MC_DT_F32, 3, sk, ks), tv = dev(MC_DT_F32, 3, sv, vs);
        mc_tensor tq = dev(MC_DT_F32, 3, sq, q), ty = dev(MC_DT_F32, 3, sy, NULL);
        mc_tensor tqs = dev(MC_DT_F32, 1, sn1, qs);
        mc_attn_opts opt = {.scale = scale, .chunk = c->chunk, .q_scale = c->nope ? &tqs : NULL};
        CHECK(mc_op_kv_write(be, &ix, &tk, &kp, &err) == MC_OK);
        CHECK(mc_op_kv_write(be, &ix, &tv, &vp, &err) == MC_OK);
        mc_status st = mc_op_attention(be, &tq, &kp, &vp, &ix, &opt, &ty, &err);
        CHECK(st == MC_OK);
        if (st != MC_OK)
            fprintf(stderr, "%s: %s\n", c->name, err.msg);
        CHECK(mc_tensor_download(&ty, y, &err) == MC_OK);
        {   /* BF16 pages: the result over the pages widened, to the bit */
            float *ksr = bf16_round(ks, (size_t)n * nkv * hd), *vsr = bf16_round(vs, (size_t)n * nkv * vd);
            float *yb = malloc((size_t)n * nh * vd * sizeof *yb), *yr = malloc((size_t)n * nh * vd * sizeof *yr);
            mc_tensor tkr = dev(MC_DT_F32, 3, sk, ksr), tvr = dev(MC_DT_F32, 3, sv, vsr);
            CHECK(mc_op_kv_write(be, &ix, &tk, &kb, &err) == MC_OK);
            CHECK(mc_op_kv_write(be, &ix, &tv, &vb, &err) == MC_OK);
            CHECK(mc_op_kv_write(be, &ix, &tkr, &kr, &err) == MC_OK);
            CHECK(mc_op_kv_write(be, &ix, &tvr, &vr, &err) == MC_OK);
            st = mc_op_attention(be, &tq, &kb, &vb, &ix, &opt, &ty, &err);
            CHECK(st == MC_OK);
            if (st != MC_OK)
                fprintf(stderr, "%s bf16: %s\n", c->name, err.msg);
            CHECK(mc_tensor_download(&ty, yb, &err) == MC_OK);
            CHECK(mc_op_attention(be, &tq, &kr, &vr, &ix, &opt, &ty, &err) == MC_OK);
            CHECK(mc_tensor_download(&ty, yr, &err) == MC_OK);
            snprintf(what, sizeof what, "%s step %d bf16 pages vs f32 pages of bf16 values", c->name,
                     step);
            compare_exact(what, yb, yr, (size_t)n * nh * vd);
            free(ksr);
            free(vsr);
            free(yb);
            free(yr);
        }
        /* reference: double loops over the contiguous K / V */
        for (int t = 0; t < n; t++) {
            int i = s.seq[t], p = s.pos[t], lo = lo_of(p, c->chunk);
            for (int h = 0; h < nh; h++) {
                int g = h / grp;
                double mx = -INFINITY, sum = 0;
                for (int j = lo; j <= p; j++) {
                    double a = 0;
                    for (int e = 0; e < hd; e++)
                        a += (double)q[((size_t)t * nh + h) * hd + e] *
                             K[i][((size_t)j * nkv + g) * hd + e];
                    sc[j - lo] = a * scale * qs[t];
                    mx = sc[j - lo] > mx ? sc[j - lo] : mx;
                }
                for (int j = lo; j <= p; j++)
                    sum += (sc[j - lo] = exp(sc[j - lo] - mx));
                double *o = want + ((size_t)t * nh + h) * vd;
                for (int e = 0; e < vd; e++) {
                    o[e] = 0;
                    for (int j = lo; j <= p; j++)
                        o[e] += sc[j - lo] / sum * V[i][((size_t)j * nkv + g) * vd + e];
                }
            }
        }
        snprintf(what, sizeof what, "%s step %d vs double loops", c->name, step);
        compare(what, y, want, (size_t)n * nh * vd, 1e-5, 1e-6);
        /* the engine's path, sequence by sequence in the same chunks */
        for (int i = 0; worker && i < c->n_seqs; i++) {
            int cn = s.cn[i], t0 = s.c0[i];
            if (cn == 0)
                continue;
            int qw = nh * hd, kw = nkv * hd;
            float *x = malloc((size_t)cn * gw.hx * sizeof *x);
            float *yw = malloc((size_t)cn * gw.hx * sizeof *yw);
            double *got = malloc((size_t)cn * qw * sizeof *got);
            for (int j = 0; j < cn; j++) {
                float *xr = x + (size_t)j * gw.hx;
                memcpy(xr, q + (size_t)(t0 + j) * qw, (size_t)qw * sizeof *x);
                memcpy(xr + qw, ks + (size_t)(t0 + j) * kw, (size_t)kw * sizeof *x);
                memcpy(xr + qw + kw, vs + (size_t)(t0 + j) * kw, (size_t)kw * sizeof *x);
            }
            CHECK(mc_attn_gqa(gw.m, &gw.w, &kvs[i], 0, x, cn, gw.cs, gw.sn, yw, &err) == MC_OK);
            kvs[i].len += cn;
            for (int j = 0; j < cn; j++)
                for (int e = 0; e < qw; e++)
                    got[(size_t)j * qw + e] = yw[(size_t)j * gw.hx + e];
            snprintf(what, sizeof what, "%s step %d seq %d vs mc_attn_gqa", c->name, step, i);
            /* to the bit, except where the temperature scales q there, the score here */
            compare(what, y + (size_t)t0 * qw, got, (size_t)cn * qw, c->nope ? 1e-6 : 0,
                    c->nope ? 1e-7 : 0);
            free(x);
            free(yw);
            free(got);
        }
        while (n_bufs > base)
            mc_buffer_free(bufs[--n_bufs]);
        free(q);
        free(ks);
        free(vs);
        free(y);
        free(want);
    }
    if (worker)
        gqa_worker_free(&gw);
    for (int i = 0; i < c->n_seqs; i++) {
        free(K[i]);
        free(V[i]);
        free(wk[i]);
        free(wv[i]);
    }
    drop_all();
}

/* ---- MLA ---- */

typedef struct {
    const char *name;
    int n_seqs, len[MAX_SEQS], bs, nh, lr, rd, nope, beta, max_chunk;
} mla_case;

/* Mistral 4 / Llama 4 position scaling of the query (beta 0.5, 4 positions). */
static float mla_qscale(int p) { return (float)(1.0 + 0.5 * log(1.0 + floor(p / 4.0))); }

static void run_mla(const mla_case *c)
{
    mc_err err;
    mc_err_clear(&err);
    sched s;
    sched_init(&s, c->n_seqs, c->len, c->bs);
    int nh = c->nh, lr = c->lr, rd = c->rd, nope = c->nope, qk = nope + rd;
    /* x = [q (nh, qk) | latent before its norm | rope key | zeros]; y = [olat | zeros] */
    int hx = nh * qk + lr + rd > nh * lr ? nh * qk + lr + rd : nh * lr;
    float scale = 1.0f / sqrtf((float)qk);
    /* the engine's path: a one-layer model whose projections select parts of
     * x, with W_vb = I (v_head_dim = kv_lora_rank) so its output is olat */
    mc_model *m = calloc(1, sizeof *m);
    float *qproj = selector(nh * qk, hx, 0), *kva = selector(lr + rd, hx, nh * qk);
    float *wo = selector(hx, nh * lr, 0), *kvb = calloc((size_t)nh * (nope + lr) * lr, 4);
    float *ones = malloc((size_t)lr * 4), *cs = malloc(512 * (size_t)rd / 2 * 4);
    float *sn = calloc(512 * (size_t)rd / 2, 4);
    if (!m || !qproj || !kva || !wo || !kvb || !ones || !cs || !sn) {
        CHECK(!"out of memory");
        return;
    }
    for (int i = 0; i < lr; i++)
        ones[i] = 1.0f;
    for (size_t i = 0; i < 512 * (size_t)rd / 2; i++)
        cs[i] = 1.0f;
    for (int h = 0; h < nh; h++) {
        fill(kvb + (size_t)h * (nope + lr) * lr, (size_t)nope * lr, 0.5f); /* W_kb */
        for (int i = 0; i < lr; i++)                                       /* W_vb = I */
            kvb[((size_t)h * (nope + lr) + nope + i) * lr + i] = 1.0f;
    }
    mc_model_desc *d = &m->d;
    d->hidden = hx;
    d->n_heads = nh;
    d->kv_lora_rank = lr;
    d->qk_nope_dim = nope;
    d->qk_rope_dim = rd;
    d->v_head_dim = lr;
    d->rope.dim = rd;
    d->rope.style = MC_ROPE_HALF;
    d->attn_scale = scale;
    d->llama4_beta = c->beta ? 0.5 : 0;
    d->llama4_orig_max = 4.0;
    d->norm_eps = 1e-6f;
    m->lay.n_heads = nh;
    mc_layer_w w = {.q_proj = mat_f32(qproj, nh * qk, hx), .kv_a = mat_f32(kva, lr + rd, hx),
                    .kv_a_norm = ones, .kv_b = mat_f32(kvb, nh * (nope + lr), lr),
                    .wo = mat_f32(wo, hx, nh * lr)};
    /* each sequence's raw latent and rope key, and the cache rows (latent normed) */
    float *RAW[MAX_SEQS], *LAT[MAX_SEQS], *PE[MAX_SEQS], *wl[MAX_SEQS], *wp[MAX_SEQS];
    mc_kv kvs[MAX_SEQS];
    for (int i = 0; i < c->n_seqs; i++) {
        size_t L = (size_t)c->len[i];
        RAW[i] = malloc(L * lr * 4);
        LAT[i] = malloc(L * lr * 4);
        PE[i] = malloc(L * rd * 4);
        wl[i] = malloc(L * lr * 4);
        wp[i] = malloc(L * rd * 4);
        fill(RAW[i], L * lr, 1.0f);
        fill(PE[i], L * rd, 1.0f);
        for (size_t p = 0; p < L; p++)
            mc_rmsnorm(LAT[i] + p * lr, RAW[i] + p * lr, ones, lr, d->norm_eps);
        kvs[i] = (mc_kv){.cap = c->len[i], .n_layers = 1, .k_width = lr, .v_width = rd,
                         .k = &wl[i], .v = &wp[i]};
    }
    int64_t sl[3] = {s.n_pages, c->bs, lr}, sp[3] = {s.n_pages, c->bs, rd};
    mc_tensor lp = dev(MC_DT_F32, 3, sl, NULL), pp = dev(MC_DT_F32, 3, sp, NULL);
    mc_tensor lb = dev(MC_DT_BF16, 3, sl, NULL), pb = dev(MC_DT_BF16, 3, sp, NULL);
    mc_tensor lr_ = dev(MC_DT_F32, 3, sl, NULL), pr = dev(MC_DT_F32, 3, sp, NULL);
    int base = n_bufs;
    char what[160];
    for (int step = 0; sched_next(&s, c->max_chunk); step++) {
        int n = s.n;
        float *qn = malloc((size_t)n * nh * nope * 4), *qlat = calloc((size_t)n * nh * lr, 4);
        float *qpe = malloc((size_t)n * nh * rd * 4), *y = malloc((size_t)n * nh * lr * 4);
        float *kvrow = malloc((size_t)n * (lr + rd) * 4), qs[512];
        double *want = malloc((size_t)n * nh * lr * sizeof *want), sc[512];
        fill(qn, (size_t)n * nh * nope, 1.0f);
        fill(qpe, (size_t)n * nh * rd, 1.0f);
        for (int t = 0; t < n; t++) {
            int i = s.seq[t], p = s.pos[t];
            qs[t] = c->beta ? mla_qscale(p) : 1.0f;
            memcpy(kvrow + (size_t)t * (lr + rd), LAT[i] + (size_t)p * lr, (size_t)lr * 4);
            memcpy(kvrow + (size_t)t * (lr + rd) + lr, PE[i] + (size_t)p * rd, (size_t)rd * 4);
            for (int h = 0; h < nh; h++) /* absorb W_kb as worker/attention.c does */
                for (int j = 0; j < nope; j++)
                    mc_axpy(qlat + ((size_t)t * nh + h) * lr, qn[((size_t)t * nh + h) * nope + j],
                            kvb + ((size_t)h * (nope + lr) + j) * lr, lr);
        }
        mc_kv_index ix = sched_index(&s);
        int64_t sr[2] = {n, lr + rd}, sq[3] = {n, nh, lr}, se[3] = {n, nh, rd}, s1[1] = {n};
        mc_tensor trow = dev(MC_DT_F32, 2, sr, kvrow), tl, tp;
        /* latent and rope key: column views of one fused (n, lr + rd) row */
        CHECK(mc_tensor_view_cols(&trow, 0, lr, &tl, &err) == MC_OK);
        CHECK(mc_tensor_view_cols(&trow, lr, rd, &tp, &err) == MC_OK);
        mc_tensor tq = dev(MC_DT_F32, 3, sq, qlat), te = dev(MC_DT_F32, 3, se, qpe);
        mc_tensor ty = dev(MC_DT_F32, 3, sq, NULL), tqs = dev(MC_DT_F32, 1, s1, qs);
        mc_attn_opts opt = {.scale = scale, .q_scale = c->beta ? &tqs : NULL};
        CHECK(mc_op_kv_write(be, &ix, &tl, &lp, &err) == MC_OK);
        CHECK(mc_op_kv_write(be, &ix, &tp, &pp, &err) == MC_OK);
        mc_status st = mc_op_mla_decode(be, &tq, &te, &lp, &pp, &ix, &opt, &ty, &err);
        CHECK(st == MC_OK);
        if (st != MC_OK)
            fprintf(stderr, "%s: %s\n", c->name, err.msg);
        CHECK(mc_tensor_download(&ty, y, &err) == MC_OK);
        {   /* BF16 pages: the result over the pages widened, to the bit */
            float *rr = bf16_round(kvrow, (size_t)n * (lr + rd));
            float *yb = malloc((size_t)n * nh * lr * 4), *yr = malloc((size_t)n * nh * lr * 4);
            mc_tensor trr = dev(MC_DT_F32, 2, sr, rr), tlr, tpr;
            CHECK(mc_tensor_view_cols(&trr, 0, lr, &tlr, &err) == MC_OK);
            CHECK(mc_tensor_view_cols(&trr, lr, rd, &tpr, &err) == MC_OK);
            CHECK(mc_op_kv_write(be, &ix, &tl, &lb, &err) == MC_OK);
            CHECK(mc_op_kv_write(be, &ix, &tp, &pb, &err) == MC_OK);
            CHECK(mc_op_kv_write(be, &ix, &tlr, &lr_, &err) == MC_OK);
            CHECK(mc_op_kv_write(be, &ix, &tpr, &pr, &err) == MC_OK);
            st = mc_op_mla_decode(be, &tq, &te, &lb, &pb, &ix, &opt, &ty, &err);
            CHECK(st == MC_OK);
            if (st != MC_OK)
                fprintf(stderr, "%s bf16: %s\n", c->name, err.msg);
            CHECK(mc_tensor_download(&ty, yb, &err) == MC_OK);
            CHECK(mc_op_mla_decode(be, &tq, &te, &lr_, &pr, &ix, &opt, &ty, &err) == MC_OK);
            CHECK(mc_tensor_download(&ty, yr, &err) == MC_OK);
            snprintf(what, sizeof what, "%s step %d bf16 pages vs f32 pages of bf16 values", c->name,
                     step);
            compare_exact(what, yb, yr, (size_t)n * nh * lr);
            free(rr);
            free(yb);
            free(yr);
        }
        for (int t = 0; t < n; t++) {
            int i = s.seq[t], p = s.pos[t];
            for (int h = 0; h < nh; h++) {
                const float *ql = qlat + ((size_t)t * nh + h) * lr;
                const float *qp = qpe + ((size_t)t * nh + h) * rd;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= p; j++) {
                    double a = 0;
                    for (int e = 0; e < lr; e++)
                        a += (double)ql[e] * LAT[i][(size_t)j * lr + e];
                    for (int e = 0; e < rd; e++)
                        a += (double)qp[e] * PE[i][(size_t)j * rd + e];
                    sc[j] = a * scale * qs[t];
                    mx = sc[j] > mx ? sc[j] : mx;
                }
                for (int j = 0; j <= p; j++)
                    sum += (sc[j] = exp(sc[j] - mx));
                double *o = want + ((size_t)t * nh + h) * lr;
                for (int e = 0; e < lr; e++) {
                    o[e] = 0;
                    for (int j = 0; j <= p; j++)
                        o[e] += sc[j] / sum * LAT[i][(size_t)j * lr + e];
                }
            }
        }
        snprintf(what, sizeof what, "%s step %d vs double loops", c->name, step);
        compare(what, y, want, (size_t)n * nh * lr, 1e-5, 1e-6);
        for (int i = 0; i < c->n_seqs; i++) {
            int cn = s.cn[i], t0 = s.c0[i], qw = nh * qk, ow = nh * lr;
            if (cn == 0)
                continue;
            float *x = calloc((size_t)cn * hx, 4), *yw = malloc((size_t)cn * hx * 4);
            double *got = malloc((size_t)cn * ow * sizeof *got);
            for (int j = 0; j < cn; j++) {
                float *xr = x + (size_t)j * hx;
                int p = s.pos[t0 + j];
                for (int h = 0; h < nh; h++) {
                    memcpy(xr + h * qk, qn + ((size_t)(t0 + j) * nh + h) * nope, (size_t)nope * 4);
                    memcpy(xr + h * qk + nope, qpe + ((size_t)(t0 + j) * nh + h) * rd,
                           (size_t)rd * 4);
                }
                memcpy(xr + qw, RAW[i] + (size_t)p * lr, (size_t)lr * 4);
                memcpy(xr + qw + lr, PE[i] + (size_t)p * rd, (size_t)rd * 4);
            }
            CHECK(mc_attn_mla(m, &w, &kvs[i], 0, x, cn, cs, sn, yw, &err) == MC_OK);
            kvs[i].len += cn;
            for (int j = 0; j < cn; j++)
                for (int e = 0; e < ow; e++)
                    got[(size_t)j * ow + e] = yw[(size_t)j * hx + e];
            snprintf(what, sizeof what, "%s step %d seq %d vs mc_attn_mla", c->name, step, i);
            compare(what, y + (size_t)t0 * ow, got, (size_t)cn * ow, 0, 0); /* to the bit */
            free(x);
            free(yw);
            free(got);
        }
        while (n_bufs > base)
            mc_buffer_free(bufs[--n_bufs]);
        free(qn);
        free(qlat);
        free(qpe);
        free(y);
        free(kvrow);
        free(want);
    }
    for (int i = 0; i < c->n_seqs; i++) {
        free(RAW[i]);
        free(LAT[i]);
        free(PE[i]);
        free(wl[i]);
        free(wp[i]);
    }
    free(m);
    free(qproj);
    free(kva);
    free(wo);
    free(kvb);
    free(ones);
    free(cs);
    free(sn);
    drop_all();
}

/* ---- refusals ---- */

/* st must be `want` with a message that contains `needle`. */
static void expect_err(mc_status st, mc_err *err, mc_status want, const char *needle, int line)
{
    check_count++;
    if (st != want || !strstr(err->msg, needle)) {
        check_failures++;
        fprintf(stderr, "line %d: got %s '%s', want %s naming '%s'\n", line, mc_status_str(st),
                err->msg, mc_status_str(want), needle);
    }
    mc_err_clear(err);
}
#define EXPECT_ERR(call, want, needle) expect_err((call), &err, (want), (needle), __LINE__)

static void run_refusals(void)
{
    mc_err err;
    mc_err_clear(&err);
    /* 2 sequences, 4 blocks of 4 positions, tables {0, 1} and {2, 3};
     * token 0 = (seq 0, pos 0), token 1 = (seq 1, pos 5) */
    int32_t table[4] = {0, 1, 2, 3}, seq[2] = {0, 1}, pos[2] = {0, 5}, pos_3[3] = {0, 5, 0};
    int64_t sbt[2] = {2, 2}, s2[1] = {2}, s3[1] = {3}, skp[4] = {4, 4, 2, 8},
            sq[3] = {2, 4, 8}, sq3[3] = {2, 3, 8}, sk[3] = {2, 2, 8}, sk7[3] = {2, 2, 7},
            sv5[4] = {5, 4, 2, 8}, sl[3] = {4, 4, 16}, sp[3] = {4, 4, 4}, sql[3] = {2, 4, 16},
            sqp[3] = {2, 4, 4}, sqp5[3] = {2, 4, 5};
    float buf[256];
    fill(buf, 256, 1.0f);
    mc_kv_index ix = {.block_table = dev(MC_DT_I32, 2, sbt, table),
                      .seq = dev(MC_DT_I32, 1, s2, seq), .pos = dev(MC_DT_I32, 1, s2, pos)};
    mc_tensor kp = dev(MC_DT_F32, 4, skp, NULL), vp = dev(MC_DT_F32, 4, skp, NULL);
    mc_tensor q = dev(MC_DT_F32, 3, sq, buf), y = dev(MC_DT_F32, 3, sq, NULL);
    mc_tensor k = dev(MC_DT_F32, 3, sk, buf), q3 = dev(MC_DT_F32, 3, sq3, buf);
    mc_tensor k7 = dev(MC_DT_F32, 3, sk7, buf), v5 = dev(MC_DT_F32, 4, sv5, NULL);
    mc_tensor qs3 = dev(MC_DT_F32, 1, s3, buf), seqf = dev(MC_DT_F32, 1, s2, buf);
    mc_tensor pos3 = dev(MC_DT_I32, 1, s3, pos_3);
    mc_tensor lp = dev(MC_DT_F32, 3, sl, NULL), pp = dev(MC_DT_F32, 3, sp, NULL);
    mc_tensor ql = dev(MC_DT_F32, 3, sql, buf), qp = dev(MC_DT_F32, 3, sqp, buf);
    mc_tensor qp5 = dev(MC_DT_F32, 3, sqp5, buf), yl = dev(MC_DT_F32, 3, sql, NULL);
    mc_attn_opts opt = {.scale = 0.5f};
    CHECK(mc_op_kv_write(be, &ix, &k, &kp, &err) == MC_OK);
    CHECK(mc_op_kv_write(be, &ix, &k, &vp, &err) == MC_OK);
    CHECK(mc_op_attention(be, &q, &kp, &vp, &ix, &opt, &y, &err) == MC_OK);

    /* the front end names the argument */
    mc_tensor bad = q;
    bad.ndim = 2;
    bad.shape[1] = 32;
    EXPECT_ERR(mc_op_attention(be, &bad, &kp, &vp, &ix, &opt, &y, &err), MC_ERR_ARG,
               "attention: q");
    EXPECT_ERR(mc_op_attention(be, &q3, &kp, &vp, &ix, &opt, &y, &err), MC_ERR_ARG,
               "query heads");
    EXPECT_ERR(mc_op_attention(be, &q, &kp, &v5, &ix, &opt, &y, &err), MC_ERR_ARG,
               "attention: v_pages");
    {   /* pages of a bf16 cache: K and V (latent and rope key) alike, nothing else */
        mc_tensor kb = dev(MC_DT_BF16, 4, skp, NULL), pb = dev(MC_DT_BF16, 3, sp, NULL);
        mc_tensor k16 = dev(MC_DT_F16, 4, skp, NULL);
        EXPECT_ERR(mc_op_attention(be, &q, &kb, &vp, &ix, &opt, &y, &err), MC_ERR_ARG,
                   "attention: v_pages: F32, want BF16");
        EXPECT_ERR(mc_op_attention(be, &q, &kp, &kb, &ix, &opt, &y, &err), MC_ERR_ARG,
                   "attention: v_pages: BF16, want F32");
        EXPECT_ERR(mc_op_mla_decode(be, &ql, &qp, &lp, &pb, &ix, &opt, &yl, &err), MC_ERR_ARG,
                   "mla_decode: pe_pages: BF16, want F32");
        EXPECT_ERR(mc_op_attention(be, &q, &k16, &k16, &ix, &opt, &y, &err), MC_ERR_ARG,
                   "attention: k_pages: dtype F16");
        EXPECT_ERR(mc_op_kv_write(be, &ix, &k, &k16, &err), MC_ERR_ARG, "kv_write: pages: dtype F16");
        CHECK(mc_op_kv_write(be, &ix, &k, &kb, &err) == MC_OK);
    }
    EXPECT_ERR(mc_op_attention(be, &q, &kp, &vp, &ix, &opt, &q, &err), MC_ERR_ARG,
               "attention: y: output overlaps");
    EXPECT_ERR(mc_op_attention(be, &q, &kp, &vp, NULL, &opt, &y, &err), MC_ERR_ARG,
               "ix is NULL");
    mc_kv_index bix = ix;
    bix.seq = seqf;
    EXPECT_ERR(mc_op_attention(be, &q, &kp, &vp, &bix, &opt, &y, &err), MC_ERR_ARG,
               "attention: ix.seq");
    bix = ix;
    bix.pos = pos3;
    EXPECT_ERR(mc_op_attention(be, &q, &kp, &vp, &bix, &opt, &y, &err), MC_ERR_ARG,
               "attention: ix.pos");
    bix = ix;
    bix.block_table = ix.pos;
    EXPECT_ERR(mc_op_kv_write(be, &bix, &k, &kp, &err), MC_ERR_ARG, "kv_write: ix.block_table");
    EXPECT_ERR(mc_op_attention(be, &q, &kp, &vp, &ix, NULL, &y, &err), MC_ERR_ARG,
               "opt is NULL");
    mc_attn_opts bo = {.scale = NAN};
    EXPECT_ERR(mc_op_attention(be, &q, &kp, &vp, &ix, &bo, &y, &err), MC_ERR_ARG, "opt.scale");
    bo = (mc_attn_opts){.scale = 1, .chunk = -1};
    EXPECT_ERR(mc_op_attention(be, &q, &kp, &vp, &ix, &bo, &y, &err), MC_ERR_ARG, "opt.chunk");
    bo = (mc_attn_opts){.scale = 1, .q_scale = &qs3};
    EXPECT_ERR(mc_op_attention(be, &q, &kp, &vp, &ix, &bo, &y, &err), MC_ERR_ARG,
               "opt.q_scale");
    EXPECT_ERR(mc_op_kv_write(be, &ix, &k7, &kp, &err), MC_ERR_ARG, "kv_write: src has");
    EXPECT_ERR(mc_op_kv_write(be, &ix, &ix.pos, &kp, &err), MC_ERR_ARG, "kv_write: src");
    EXPECT_ERR(mc_op_mla_decode(be, &ql, &qp5, &lp, &pp, &ix, &opt, &yl, &err), MC_ERR_ARG,
               "mla_decode: q_pe");
    EXPECT_ERR(mc_op_mla_decode(be, &ql, &qp, &lp, &kp, &ix, &opt, &yl, &err), MC_ERR_ARG,
               "mla_decode: pe_pages");
    CHECK(mc_op_mla_decode(be, &ql, &qp, &lp, &pp, &ix, &opt, &yl, &err) == MC_OK);

    /* the backend names the token and the field; a refused write changes nothing */
    float before[256], after[256];
    CHECK(mc_tensor_download(&kp, before, &err) == MC_OK);
    int32_t v;
    v = 2;
    CHECK(mc_buffer_upload(ix.seq.buf, ix.seq.offset + 4, &v, 4, &err) == MC_OK);
    EXPECT_ERR(mc_op_kv_write(be, &ix, &k, &kp, &err), MC_ERR_ARG, "token 1: seq = 2");
    EXPECT_ERR(mc_op_attention(be, &q, &kp, &vp, &ix, &opt, &y, &err), MC_ERR_ARG,
               "token 1: seq = 2");
    v = 1;
    CHECK(mc_buffer_upload(ix.seq.buf, ix.seq.offset + 4, &v, 4, &err) == MC_OK);
    v = 8;
    CHECK(mc_buffer_upload(ix.pos.buf, ix.pos.offset + 4, &v, 4, &err) == MC_OK);
    EXPECT_ERR(mc_op_kv_write(be, &ix, &k, &kp, &err), MC_ERR_ARG, "token 1: pos = 8");
    EXPECT_ERR(mc_op_mla_decode(be, &ql, &qp, &lp, &pp, &ix, &opt, &yl, &err), MC_ERR_ARG,
               "token 1: pos = 8");
    v = -1;
    CHECK(mc_buffer_upload(ix.pos.buf, ix.pos.offset + 4, &v, 4, &err) == MC_OK);
    EXPECT_ERR(mc_op_attention(be, &q, &kp, &vp, &ix, &opt, &y, &err), MC_ERR_ARG,
               "token 1: pos = -1");
    v = 5;
    CHECK(mc_buffer_upload(ix.pos.buf, ix.pos.offset + 4, &v, 4, &err) == MC_OK);
    v = 9; /* seq 1's block 1 (holding position 5) past the 4 blocks */
    CHECK(mc_buffer_upload(ix.block_table.buf, ix.block_table.offset + 12, &v, 4, &err) ==
          MC_OK);
    EXPECT_ERR(mc_op_kv_write(be, &ix, &k, &kp, &err), MC_ERR_ARG,
               "token 1: block_table[1][1] = 9");
    v = 3;
    CHECK(mc_buffer_upload(ix.block_table.buf, ix.block_table.offset + 12, &v, 4, &err) ==
          MC_OK);
    v = -1; /* seq 1's block 0: read by its attention, not by its write, nor when chunked */
    CHECK(mc_buffer_upload(ix.block_table.buf, ix.block_table.offset + 8, &v, 4, &err) ==
          MC_OK);
    CHECK(mc_op_kv_write(be, &ix, &k, &kp, &err) == MC_OK);
    EXPECT_ERR(mc_op_attention(be, &q, &kp, &vp, &ix, &opt, &y, &err), MC_ERR_ARG,
               "token 1: block_table[1][0] = -1");
    bo = (mc_attn_opts){.scale = 0.5f, .chunk = 4};
    CHECK(mc_op_attention(be, &q, &kp, &vp, &ix, &bo, &y, &err) == MC_OK);
    CHECK(mc_tensor_download(&kp, after, &err) == MC_OK);
    CHECK(memcmp(before, after, sizeof before) == 0); /* refused writes wrote nothing */
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
    /* every case on one thread and on three (the ops split their (token,
     * head) pairs over the pool when there is enough work, which the "long"
     * cases have): the same comparisons, bit for bit against mc_attn_* */
    for (int threads = 1; threads <= 3; threads += 2) {
    mc_kernels_set_threads(threads);
    static const gqa_case gqa[] = {
        {"gqa bs1 nh=nkv", 3, {5, 1, 12}, 1, 2, 2, 8, 8, 0, 0, 6},
        {"gqa bs3 nh=4nkv", 5, {17, 3, 30, 1, 9}, 3, 8, 2, 16, 16, 0, 0, 8},
        {"gqa bs16 nh=4nkv", 4, {40, 16, 5, 33}, 16, 4, 1, 8, 8, 0, 0, 20},
        {"gqa bs3 chunked 5", 4, {23, 7, 12, 4}, 3, 4, 2, 8, 8, 5, 0, 6},
        {"gqa bs16 chunked 8", 3, {35, 20, 9}, 16, 4, 1, 8, 8, 8, 0, 12},
        {"gqa bs3 NoPE temperature", 3, {30, 11, 2}, 3, 4, 2, 8, 8, 0, 1, 9},
        {"gqa bs3 vd != hd", 3, {14, 6, 9}, 3, 4, 2, 8, 12, 0, 0, 5},
        {"gqa bs16 long", 3, {300, 200, 90}, 16, 8, 2, 32, 32, 0, 0, 128},
        {"gqa bs16 group of 20", 2, {70, 33}, 16, 40, 2, 16, 16, 0, 0, 40},
    };
    for (size_t k = 0; k < sizeof gqa / sizeof gqa[0]; k++)
        run_gqa(&gqa[k]);
    static const mla_case mla[] = {
        {"mla bs1", 3, {6, 1, 9}, 1, 2, 16, 8, 8, 0, 5},
        {"mla bs3 position scale", 4, {20, 3, 11, 1}, 3, 4, 32, 8, 8, 1, 8},
        {"mla bs16", 3, {37, 16, 4}, 16, 4, 32, 8, 16, 0, 20},
        {"mla bs16 long", 2, {260, 150}, 16, 8, 64, 16, 16, 0, 100},
        {"mla bs3 20 heads", 2, {50, 21}, 3, 20, 32, 8, 16, 0, 24},
    };
    for (size_t k = 0; k < sizeof mla / sizeof mla[0]; k++)
        run_mla(&mla[k]);
    }
    run_refusals();
    mc_backend_free(be);
    return check_report("test_backend_attn");
}
