/* test_backend_moe.c - the MoE block and LayerNorm ops of the backend
 * interface (kernels/backend.h) on the CPU backend:
 *   - router_topk against the per-call reference (tests/ref: mc_route_token
 *     and mc_v4_route called directly) for every router kind: softmax with and
 *     without renormalization, DeepSeek noaux_tc (sigmoid, correction bias,
 *     group-limited, scaled), Mistral's grouped softmax, Llama 4 top-1,
 *     DeepSeek-V4 sqrtsoftplus and sigmoid; logits on a coarse grid so that
 *     ties happen in the choice and in the group scores; ids identical,
 *     weights within 1e-6;
 *   - moe_permute / moe_unpermute_weighted: offsets and order against a
 *     count here, the round trip exact, the weighted combine bit-identical
 *     to the sum in slot order;
 *   - grouped_experts against a per-expert loop of double-precision products
 *     over weights dequantized here, for BF16, Q8_0 (tolerance from the
 *     activation quantization step, carried through SwiGLU), FP8 with block
 *     scales, and Llama 4's fused transposed BF16 slabs with input weighting;
 *     empty experts and uneven counts; DeepSeek-V4's clamp, output weighting;
 *   - layernorm against a double reference (with / without w and b, in place);
 *   - refusals naming the argument or the field.
 * Prints the first mismatches of each case. */
#include "backend.h"
#include "check.h"
#include "kernels.h"
#include "model.h"
#include "model_config.h"
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
static float runi(float lo, float hi)
{
    return lo + (hi - lo) * (float)((rnext() >> 40) / 16777216.0);
}
static void fill(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = runi(-scale, scale);
}

static mc_backend *be;

/* Buffers made by the helpers below, freed at the end of each case. */
static mc_buffer *bufs[512];
static int n_bufs;
static void bufs_free(void)
{
    while (n_bufs > 0)
        mc_buffer_free(bufs[--n_bufs]);
}

static mc_buffer *buf_new(size_t bytes, const void *host)
{
    mc_buffer *b = NULL;
    mc_err e;
    mc_err_clear(&e);
    if (mc_buffer_alloc(be, bytes, &b, &e) != MC_OK ||
        (host && mc_buffer_upload(b, 0, host, bytes, &e) != MC_OK) || n_bufs == 512) {
        fprintf(stderr, "buffer: %s\n", e.msg);
        exit(1);
    }
    bufs[n_bufs++] = b;
    return b;
}

/* A contiguous (rows, cols) tensor of dtype dt in a fresh buffer, holding host (or garbage). */
static mc_tensor tens(mc_dtype dt, int64_t rows, int64_t cols, const void *host)
{
    mc_tensor t;
    mc_err e;
    mc_err_clear(&e);
    mc_buffer *b = buf_new(mc_dtype_row_bytes(dt, cols) * (size_t)rows, host);
    if (mc_tensor_init_2d(&t, b, 0, dt, rows, cols, &e) != MC_OK) {
        fprintf(stderr, "tensor: %s\n", e.msg);
        exit(1);
    }
    return t;
}

static void down(const mc_tensor *t, void *host)
{
    mc_err e;
    mc_err_clear(&e);
    if (mc_tensor_download(t, host, &e) != MC_OK) {
        fprintf(stderr, "download: %s\n", e.msg);
        exit(1);
    }
}

#define OK(call)                                                                                   \
    do {                                                                                           \
        mc_err e_;                                                                                 \
        mc_err_clear(&e_);                                                                         \
        mc_err *err_ = &e_;                                                                        \
        mc_status s_ = (call);                                                                     \
        check_count++;                                                                             \
        if (s_ != MC_OK) {                                                                         \
            check_failures++;                                                                      \
            fprintf(stderr, "line %d: %s failed: %s\n", __LINE__, #call, e_.msg);                  \
        }                                                                                          \
    } while (0)

/* The call must fail with MC_ERR_ARG and a message containing needle. */
#define REFUSED(call, needle)                                                                      \
    do {                                                                                           \
        mc_err e_;                                                                                 \
        mc_err_clear(&e_);                                                                         \
        mc_err *err_ = &e_;                                                                        \
        mc_status s_ = (call);                                                                     \
        check_count++;                                                                             \
        if (s_ != MC_ERR_ARG || !strstr(e_.msg, needle)) {                                         \
            check_failures++;                                                                      \
            fprintf(stderr, "line %d: got %s '%s', want MC_ERR_ARG naming '%s'\n", __LINE__,      \
                    mc_status_str(s_), e_.msg, needle);                                            \
        }                                                                                          \
    } while (0)

/* |got - want| <= tol[i]; prints up to 5 mismatches. */
static void compare(const char *what, const float *got, const double *want, const double *tol,
                    size_t n)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= tol[i])) {
            if (bad < 5)
                fprintf(stderr, "  %s: [%zu] got %.9g want %.9g (tol %.3g)\n", what, i, got[i],
                        want[i], tol[i]);
            bad++;
        }
    check_count++;
    if (bad) {
        check_failures++;
        fprintf(stderr, "%s: %d of %zu values differ\n", what, bad, n);
    }
}

/* ---- router ---- */

static mc_model_desc desc; /* large: static */

static mc_router_opts opts_of(const mc_model_desc *d)
{
    mc_router_opts o = {.k = d->n_experts_per_tok, .n_group = d->n_group,
                        .topk_group = d->topk_group, .scale = 1.0f};
    if (d->family == MC_FAM_DEEPSEEK_V4) {
        o.score = d->v4.score == MC_V4_SCORE_SIGMOID ? MC_ROUTE_SIGMOID : MC_ROUTE_SQRTSOFTPLUS;
        o.n_group = o.topk_group = 1;
        o.renorm = 1;
        o.norm_eps = 1e-20f;
        o.scale = d->routed_scale;
    } else if (d->router == MC_ROUTER_LLAMA4) {
        o.score = MC_ROUTE_LOGIT_SIGMOID;
    } else {
        o.score = d->score_func == MC_SCORE_SOFTMAX ? MC_ROUTE_SOFTMAX : MC_ROUTE_SIGMOID;
        o.renorm = d->norm_topk_prob;
        o.norm_eps = d->score_func == MC_SCORE_SIGMOID ? 1e-20f : 0.0f;
        o.scale = d->routed_scale;
    }
    return o;
}

/* n tokens of random logits (on a grid of `grid` steps when grid > 0: ties)
 * through the op and through today's engine. */
static void router_case(const char *what, int n, float grid, int with_bias)
{
    const mc_model_desc *d = &desc;
    int E = d->n_experts, k = d->n_experts_per_tok;
    int v4 = d->family == MC_FAM_DEEPSEEK_V4;
    float *lg = malloc((size_t)n * E * sizeof *lg), bias[512];
    fill(lg, (size_t)n * E, 3.0f);
    if (grid > 0)
        for (int i = 0; i < n * E; i++)
            lg[i] = roundf(lg[i] / grid) * grid;
    for (int e = 0; e < E; e++)
        bias[e] = grid > 0 ? roundf(runi(-0.2f, 0.2f) / grid) * grid * 0.25f : runi(-0.2f, 0.2f);
    mc_tensor tl = tens(MC_DT_F32, n, E, lg), tb = tens(MC_DT_F32, 1, E, bias);
    mc_tensor ti = tens(MC_DT_I32, n, k, NULL), tw = tens(MC_DT_F32, n, k, NULL);
    mc_router_opts o = opts_of(d);
    OK(mc_op_router_topk(be, &tl, with_bias ? &tb : NULL, &o, &ti, &tw, err_));
    int32_t *ids = malloc((size_t)n * k * sizeof *ids);
    float *w = malloc((size_t)n * k * sizeof *w);
    down(&ti, ids);
    down(&tw, w);
    int bad = 0;
    for (int t = 0; t < n; t++) {
        int ri[64];
        float rw[64];
        if (v4)
            mc_v4_route(d, lg + (size_t)t * E, with_bias ? bias : NULL, NULL, ri, rw);
        else
            mc_route_token(d, lg + (size_t)t * E, with_bias ? bias : NULL, ri, rw);
        for (int j = 0; j < k; j++) {
            int jj = j;
            if (v4) /* the reference's selection leaves no order: match by id */
                for (jj = 0; jj < k && ri[jj] != ids[(size_t)t * k + j]; jj++)
                    ;
            int32_t gi = ids[(size_t)t * k + j];
            float gw = w[(size_t)t * k + j];
            if (jj == k || gi != ri[jj] || !(fabsf(gw - rw[jj]) <= 1e-6f)) {
                if (bad++ < 5)
                    fprintf(stderr, "  router %s: token %d pick %d: got expert %d weight %.9g, "
                            "want expert %d weight %.9g\n", what, t, j, gi, gw,
                            jj < k ? ri[jj] : -1, jj < k ? rw[jj] : 0.0f);
            }
        }
    }
    check_count++;
    if (bad) {
        check_failures++;
        fprintf(stderr, "router %s: %d picks differ\n", what, bad);
    }
    free(lg);
    free(ids);
    free(w);
    bufs_free();
}

static void set_router(mc_family fam, mc_router_kind kind, mc_score_func sf, int E, int k, int G,
                       int TG, bool norm, float scale)
{
    memset(&desc, 0, sizeof desc);
    desc.family = fam;
    desc.router = kind;
    desc.score_func = sf;
    desc.n_experts = E;
    desc.n_experts_per_tok = k;
    desc.n_group = G;
    desc.topk_group = TG;
    desc.norm_topk_prob = norm;
    desc.routed_scale = scale;
}

static void test_router(void)
{
    /* Qwen3-style softmax top-k, without and with renormalization */
    set_router(MC_FAM_QWEN3_MOE, MC_ROUTER_TOPK, MC_SCORE_SOFTMAX, 16, 4, 1, 1, false, 1.0f);
    router_case("softmax", 40, 0, 0);
    router_case("softmax ties", 40, 0.5f, 0);
    desc.norm_topk_prob = true;
    router_case("softmax renorm", 40, 0, 0);
    router_case("softmax renorm ties", 40, 0.5f, 0);
    /* DeepSeek-V3 noaux_tc: sigmoid, bias for the choice, 8 groups keep 3, scaled */
    set_router(MC_FAM_DEEPSEEK_V3, MC_ROUTER_TOPK, MC_SCORE_SIGMOID, 64, 8, 8, 3, true, 2.5f);
    router_case("noaux_tc", 40, 0, 1);
    router_case("noaux_tc ties", 60, 0.5f, 1);
    router_case("noaux_tc no bias", 20, 0, 0);
    /* Mistral: softmax with group-limited top-k */
    set_router(MC_FAM_MISTRAL4, MC_ROUTER_TOPK, MC_SCORE_SOFTMAX, 32, 4, 4, 2, true, 1.0f);
    router_case("mistral grouped", 40, 0, 0);
    router_case("mistral grouped ties", 40, 0.25f, 0);
    /* Llama 4: top-1 of the logits, sigmoid weight */
    set_router(MC_FAM_LLAMA4, MC_ROUTER_LLAMA4, MC_SCORE_SIGMOID, 16, 1, 1, 1, false, 1.0f);
    router_case("llama4", 40, 0, 0);
    router_case("llama4 ties", 40, 0.5f, 0);
    /* DeepSeek-V4: sqrtsoftplus / sigmoid with bias, normalized and scaled
     * (no ties: its reference breaks them as torch.topk does) */
    set_router(MC_FAM_DEEPSEEK_V4, MC_ROUTER_TOPK, MC_SCORE_SIGMOID, 32, 6, 1, 1, true, 1.5f);
    desc.v4.score = MC_V4_SCORE_SQRTSOFTPLUS;
    router_case("v4 sqrtsoftplus", 40, 0, 1);
    desc.v4.score = MC_V4_SCORE_SIGMOID;
    router_case("v4 sigmoid", 40, 0, 1);

    /* refusals */
    float lg[4 * 8] = {0};
    mc_tensor tl = tens(MC_DT_F32, 4, 8, lg), ti = tens(MC_DT_I32, 4, 2, NULL);
    mc_tensor tw = tens(MC_DT_F32, 4, 2, NULL), tb = tens(MC_DT_F32, 1, 7, NULL);
    mc_tensor tf = tens(MC_DT_F32, 4, 2, NULL);
    mc_router_opts o = {.score = MC_ROUTE_SIGMOID, .k = 2, .n_group = 1, .topk_group = 1,
                        .scale = 1.0f};
    OK(mc_op_router_topk(be, &tl, NULL, &o, &ti, &tw, err_));
    REFUSED(mc_op_router_topk(be, &tl, &tb, &o, &ti, &tw, err_), "router_topk: bias");
    REFUSED(mc_op_router_topk(be, &tl, NULL, &o, &tf, &tw, err_), "router_topk: ids");
    REFUSED(mc_op_router_topk(be, &tl, NULL, NULL, &ti, &tw, err_), "opts");
    o.k = 9;
    REFUSED(mc_op_router_topk(be, &tl, NULL, &o, &ti, &tw, err_), "opts.k");
    o.k = 2;
    o.n_group = 3;
    o.topk_group = 1;
    REFUSED(mc_op_router_topk(be, &tl, NULL, &o, &ti, &tw, err_), "opts.n_group");
    o.n_group = 4;
    o.topk_group = 0;
    REFUSED(mc_op_router_topk(be, &tl, NULL, &o, &ti, &tw, err_), "opts.topk_group");
    o.n_group = 1;
    o.score = MC_ROUTE_COUNT;
    REFUSED(mc_op_router_topk(be, &tl, NULL, &o, &ti, &tw, err_), "opts.score");
    bufs_free();
}

/* ---- permutation ---- */

static void test_permute(void)
{
    enum { N = 13, K = 3, E = 7, H = 10 };
    float x[N * H], xp[N * K * H], y[N * H], wts[N * K];
    int32_t ids[N * K], slot[N * K], off[E + 1];
    fill(x, N * H, 2.0f);
    for (int i = 0; i < N * K; i++) {
        ids[i] = (int32_t)(rnext() % E);
        if (ids[i] == 4)
            ids[i] = 5; /* expert 4 gets nothing */
        wts[i] = i % K == 0 ? 0.5f : 0.25f; /* sums to 1 exactly per token */
    }
    mc_tensor tx = tens(MC_DT_F32, N, H, x), tid = tens(MC_DT_I32, N, K, ids);
    mc_tensor txp = tens(MC_DT_F32, N * K, H, NULL), ts = tens(MC_DT_I32, N, K, NULL);
    mc_tensor to = tens(MC_DT_I32, 1, E + 1, NULL), tw = tens(MC_DT_F32, N, K, wts);
    mc_tensor ty = tens(MC_DT_F32, N, H, NULL);
    OK(mc_op_moe_permute(be, &tx, &tid, &txp, &ts, &to, err_));
    down(&txp, xp);
    down(&ts, slot);
    down(&to, off);
    /* offsets from a count here; slots: grouped by expert, stable in pair order */
    int cnt[E + 1] = {0}, bad = 0, next[E];
    for (int i = 0; i < N * K; i++)
        cnt[ids[i] + 1]++;
    for (int e = 0; e < E; e++)
        cnt[e + 1] += cnt[e];
    for (int e = 0; e <= E; e++)
        if (off[e] != cnt[e] && bad++ < 5)
            fprintf(stderr, "  permute: offsets[%d] = %d, want %d\n", e, off[e], cnt[e]);
    memcpy(next, cnt, sizeof next);
    for (int i = 0; i < N * K; i++) {
        int want = next[ids[i]]++;
        if (slot[i] != want && bad++ < 5)
            fprintf(stderr, "  permute: slot of pair %d = %d, want %d\n", i, slot[i], want);
        else if (memcmp(xp + (size_t)want * H, x + (size_t)(i / K) * H, H * sizeof *x) &&
                 bad++ < 5)
            fprintf(stderr, "  permute: row %d is not token %d\n", want, i / K);
    }
    CHECK(bad == 0);
    /* round trip with weights summing to 1 in powers of 2: exact */
    OK(mc_op_moe_unpermute_weighted(be, &txp, &ts, &tw, &ty, err_));
    down(&ty, y);
    CHECK(memcmp(x, y, sizeof x) == 0);
    /* random weights: the products added in slot order, bit for bit */
    float yp[N * K * H];
    fill(yp, N * K * H, 1.0f);
    fill(wts, N * K, 1.0f);
    mc_tensor typ = tens(MC_DT_F32, N * K, H, yp), tw2 = tens(MC_DT_F32, N, K, wts);
    OK(mc_op_moe_unpermute_weighted(be, &typ, &ts, &tw2, &ty, err_));
    down(&ty, y);
    bad = 0;
    for (int t = 0; t < N; t++)
        for (int h = 0; h < H; h++) {
            float acc = 0;
            for (int r = 0; r < N * K; r++) /* slots ascending */
                for (int j = 0; j < K; j++)
                    if (slot[t * K + j] == r) {
                        float p = wts[t * K + j] * yp[(size_t)r * H + h];
                        acc += p;
                    }
            if (acc != y[t * H + h] && bad++ < 5)
                fprintf(stderr, "  unpermute: [%d, %d] got %.9g want %.9g\n", t, h, y[t * H + h],
                        acc);
        }
    CHECK(bad == 0);
    OK(mc_op_moe_unpermute_weighted(be, &typ, &ts, NULL, &ty, err_));

    /* contents and arguments refused */
    int32_t bad_ids[N * K];
    memcpy(bad_ids, ids, sizeof bad_ids);
    bad_ids[1 * K + 2] = E;
    mc_tensor tbi = tens(MC_DT_I32, N, K, bad_ids);
    REFUSED(mc_op_moe_permute(be, &tx, &tbi, &txp, &ts, &to, err_), "ids[1, 2]");
    mc_tensor ts_bad = tens(MC_DT_I32, N, K, NULL);
    int32_t sl[N * K];
    memcpy(sl, slot, sizeof sl);
    sl[5] = N * K;
    OK(mc_tensor_upload(&ts_bad, sl, err_));
    REFUSED(mc_op_moe_unpermute_weighted(be, &typ, &ts_bad, &tw2, &ty, err_), "slot[1, 2]");
    REFUSED(mc_op_moe_permute(be, &tx, &tid, &ty, &ts, &to, err_), "moe_permute: xp");
    REFUSED(mc_op_moe_permute(be, &tx, &tid, &txp, &ts, &ts, err_), "moe_permute: offsets");
    REFUSED(mc_op_moe_unpermute_weighted(be, &typ, &ts, &tx, &ty, err_), "moe_unpermute: weights");
    bufs_free();
}

/* ---- grouped experts ---- */

/* A random out x in weight of dtype dt and its dequantized values (ref,
 * caller frees). */
static mc_tensor make_w(mc_dtype dt, int O, int I, double **ref)
{
    float *f = malloc((size_t)O * I * sizeof *f);
    fill(f, (size_t)O * I, 0.3f);
    double *r = malloc((size_t)O * I * sizeof *r);
    mc_tensor t;
    mc_err e;
    mc_err_clear(&e);
    if (dt == MC_DT_Q8_0) {
        mc_mat src = {.dtype = MC_DT_F32, .rows = O, .cols = I, .row_stride = (size_t)I, .data = f};
        mc_mat q;
        void *store;
        if (mc_mat_quantize(&src, dt, &q, &store, &e) != MC_OK) {
            fprintf(stderr, "quantize: %s\n", e.msg);
            exit(1);
        }
        size_t rb = mc_dtype_row_bytes(dt, (int64_t)q.row_stride);
        float *row = malloc(q.row_stride * sizeof *row);
        for (int o = 0; o < O; o++) {
            mc_dequantize_row(dt, (const unsigned char *)store + (size_t)o * rb, row, I);
            for (int i = 0; i < I; i++)
                r[(size_t)o * I + i] = row[i];
        }
        free(row);
        t = tens(dt, O, I, store);
        free(store);
    } else if (dt == MC_DT_BF16) {
        uint16_t *h = malloc((size_t)O * I * sizeof *h);
        for (size_t i = 0; i < (size_t)O * I; i++) {
            h[i] = mc_f32_to_bf16(f[i]);
            r[i] = mc_bf16_to_f32(h[i]);
        }
        t = tens(dt, O, I, h);
        free(h);
    } else { /* F8_E4M3 with one 128x128 scale block per tile */
        uint8_t *q = malloc((size_t)O * I);
        int sr = (O + 127) / 128, sc = (I + 127) / 128;
        float s[64];
        for (int i = 0; i < sr * sc; i++)
            s[i] = runi(0.5f, 2.0f) / 300.0f;
        for (int o = 0; o < O; o++)
            for (int i = 0; i < I; i++) {
                size_t j = (size_t)o * I + i;
                q[j] = mc_f32_to_fp8_e4m3(f[j] * 300.0f);
                r[j] = mc_fp8_e4m3_decode(q[j]) * s[(o / 128) * sc + i / 128];
            }
        t = tens(dt, O, I, q);
        mc_tensor ts = tens(MC_DT_F32, sr, sc, s);
        if (mc_tensor_set_scales(&t, &ts, 128, 128, &e) != MC_OK) {
            fprintf(stderr, "scales: %s\n", e.msg);
            exit(1);
        }
        free(q);
    }
    free(f);
    *ref = r;
    return t;
}

/* want[o] = sum_i W[o, i] v[i] in double and its error bound, given the
 * error bound ev[i] of v: the weights' |W| ev, plus (Q8_0) the
 * quantization of v to amax / 127 steps per block of 32, plus f32 rounding. */
static void ref_product(const double *W, int O, int I, const double *v, const double *ev,
                        int q8, double *want, double *tol)
{
    for (int o = 0; o < O; o++) {
        const double *wr = W + (size_t)o * I;
        double s = 0, mag = 0, e = 0;
        for (int i = 0; i < I; i++) {
            s += wr[i] * v[i];
            mag += fabs(wr[i] * v[i]);
            e += fabs(wr[i]) * ev[i];
        }
        if (q8)
            for (int b0 = 0; b0 < I; b0 += 32) {
                double amax = 0, wsum = 0;
                for (int i = b0; i < I && i < b0 + 32; i++) {
                    amax = fmax(amax, fabs(v[i]) + ev[i]);
                    wsum += fabs(wr[i]);
                }
                e += wsum * amax / 254.0 * 1.0001;
            }
        want[o] = s;
        tol[o] = e + 4e-6 * mag + 1e-7;
    }
}

static double silu_d(double v) { return v / (1.0 + exp(-v)); }

/* n_exp experts with counts cnt[] through grouped_experts, against the
 * reference. llama4: BF16 fused transposed slabs, input weighted; lim:
 * V4 clamp (with output weighting). */
static void experts_case(const char *what, mc_dtype dt, int n_exp, const int *cnt, int H, int I,
                         int llama4, float lim)
{
    int m = 0, off[16];
    off[0] = 0;
    for (int e = 0; e < n_exp; e++)
        off[e + 1] = m += cnt[e];
    mc_tensor gate[8], up[8], dn[8];
    double *rg[8], *ru[8], *rd[8];
    if (llama4) { /* gate_up_proj [E, H, 2I] and down_proj [E, I, H], as stored */
        uint16_t *gu = malloc((size_t)n_exp * H * 2 * I * 2), *dd = malloc((size_t)n_exp * I * H * 2);
        for (int e = 0; e < n_exp; e++) {
            rg[e] = malloc((size_t)I * H * sizeof(double));
            ru[e] = malloc((size_t)I * H * sizeof(double));
            rd[e] = malloc((size_t)H * I * sizeof(double));
            for (int i = 0; i < H; i++)
                for (int o = 0; o < 2 * I; o++) {
                    uint16_t h = mc_f32_to_bf16(runi(-0.3f, 0.3f));
                    gu[((size_t)e * H + i) * 2 * I + o] = h;
                    (o < I ? rg[e] : ru[e])[(size_t)(o % I) * H + i] = mc_bf16_to_f32(h);
                }
            for (int i = 0; i < I; i++)
                for (int o = 0; o < H; o++) {
                    uint16_t h = mc_f32_to_bf16(runi(-0.3f, 0.3f));
                    dd[((size_t)e * I + i) * H + o] = h;
                    rd[e][(size_t)o * I + i] = mc_bf16_to_f32(h);
                }
        }
        mc_buffer *bgu = buf_new((size_t)n_exp * H * 2 * I * 2, gu);
        mc_buffer *bd = buf_new((size_t)n_exp * I * H * 2, dd);
        for (int e = 0; e < n_exp; e++) {
            mc_tensor slab;
            OK(mc_tensor_init_transposed(&slab, bgu, (size_t)e * H * 2 * I * 2, MC_DT_BF16, 2 * I,
                                         H, 2 * I, err_));
            OK(mc_tensor_view_rows(&slab, 0, I, &gate[e], err_));
            OK(mc_tensor_view_rows(&slab, I, I, &up[e], err_));
            OK(mc_tensor_init_transposed(&dn[e], bd, (size_t)e * I * H * 2, MC_DT_BF16, H, I, H,
                                         err_));
        }
        free(gu);
        free(dd);
    } else {
        for (int e = 0; e < n_exp; e++) {
            gate[e] = make_w(dt, I, H, &rg[e]);
            up[e] = make_w(dt, I, H, &ru[e]);
            dn[e] = make_w(dt, H, I, &rd[e]);
        }
    }
    int q8 = dt == MC_DT_Q8_0;
    float *x = malloc((size_t)m * H * sizeof *x), *y = malloc((size_t)m * H * sizeof *y);
    float rw[256];
    fill(x, (size_t)m * H, 1.0f);
    for (int r = 0; r < m; r++)
        rw[r] = runi(0.1f, 1.0f);
    mc_tensor tx = tens(MC_DT_F32, m, H, x), ty = tens(MC_DT_F32, m, H, NULL);
    mc_tensor to = tens(MC_DT_I32, 1, n_exp + 1, off), trw = tens(MC_DT_F32, 1, m, rw);
    mc_experts_opts o = {.row_weight = (llama4 || lim > 0) ? &trw : NULL, .weight_input = llama4,
                         .swiglu_limit = lim};
    OK(mc_op_grouped_experts(be, &tx, &to, n_exp, gate, up, dn, &o, &ty, err_));
    down(&ty, y);
    double *want = malloc((size_t)m * H * sizeof *want), *tol = malloc((size_t)m * H * sizeof *tol);
    double *v = malloc((size_t)(H + I) * sizeof *v), *ev = calloc((size_t)(H + I), sizeof *ev);
    double *g = malloc((size_t)I * sizeof *g), *u = malloc((size_t)I * sizeof *u);
    double *eg = malloc((size_t)I * sizeof *eg), *eu = malloc((size_t)I * sizeof *eu);
    for (int e = 0; e < n_exp; e++)
        for (int r = off[e]; r < off[e + 1]; r++) {
            for (int h = 0; h < H; h++) {
                v[h] = x[(size_t)r * H + h] * (llama4 ? (double)rw[r] : 1.0);
                ev[h] = llama4 ? fabs(v[h]) * 6e-8 : 0; /* the f32 product */
            }
            ref_product(rg[e], I, H, v, ev, q8, g, eg);
            ref_product(ru[e], I, H, v, ev, q8, u, eu);
            for (int i = 0; i < I; i++) { /* h = silu(g) u; |silu'| <= 1.1 */
                double gv = g[i], uv = u[i], egv = eg[i], euv = eu[i];
                if (lim > 0) {
                    gv = fmin(gv, lim);
                    uv = fmax(-lim, fmin(uv, lim));
                }
                v[i] = silu_d(gv) * uv;
                ev[i] = 1.1 * egv * (fabs(uv) + euv) + fabs(silu_d(gv)) * euv + 1e-7 * fabs(v[i]);
            }
            ref_product(rd[e], H, I, v, ev, q8, want + (size_t)r * H, tol + (size_t)r * H);
            if (lim > 0)
                for (int h = 0; h < H; h++) {
                    want[(size_t)r * H + h] *= rw[r];
                    tol[(size_t)r * H + h] *= rw[r];
                }
        }
    compare(what, y, want, tol, (size_t)m * H);
    for (int e = 0; e < n_exp; e++) {
        free(rg[e]);
        free(ru[e]);
        free(rd[e]);
    }
    free(x);
    free(y);
    free(want);
    free(tol);
    free(v);
    free(ev);
    free(g);
    free(u);
    free(eg);
    free(eu);
    bufs_free();
}

static void test_experts(void)
{
    const int cnt[5] = {3, 0, 7, 1, 0};
    experts_case("experts bf16", MC_DT_BF16, 5, cnt, 64, 96, 0, 0);
    experts_case("experts q8_0", MC_DT_Q8_0, 5, cnt, 64, 96, 0, 0);
    experts_case("experts fp8", MC_DT_F8_E4M3, 5, cnt, 64, 96, 0, 0);
    const int cnt4[4] = {0, 4, 2, 9};
    experts_case("experts llama4 fused", MC_DT_BF16, 4, cnt4, 48, 40, 1, 0);
    experts_case("experts v4 clamp", MC_DT_BF16, 5, cnt, 64, 96, 0, 0.3f);

    /* refusals: contents (offsets) and arguments (shapes) */
    enum { H = 32, I = 32, M = 5 };
    double *r[6];
    mc_tensor g[2] = {make_w(MC_DT_BF16, I, H, &r[0]), make_w(MC_DT_BF16, I, H, &r[1])};
    mc_tensor u[2] = {make_w(MC_DT_BF16, I, H, &r[2]), make_w(MC_DT_BF16, I - 1, H, &r[3])};
    mc_tensor d[2] = {make_w(MC_DT_BF16, H, I, &r[4]), make_w(MC_DT_BF16, H, I, &r[5])};
    for (int i = 0; i < 6; i++)
        free(r[i]);
    int32_t o_bad[3] = {0, 6, 5}, o_ok[3] = {0, 2, M}, o_short[3] = {0, 2, 4};
    mc_tensor tx = tens(MC_DT_F32, M, H, NULL), ty = tens(MC_DT_F32, M, H, NULL);
    mc_tensor tob = tens(MC_DT_I32, 1, 3, o_bad), too = tens(MC_DT_I32, 1, 3, o_ok);
    mc_tensor tos = tens(MC_DT_I32, 1, 3, o_short);
    OK(mc_buffer_memset(tx.buf, 0, 0, mc_buffer_size(tx.buf), err_));
    REFUSED(mc_op_grouped_experts(be, &tx, &too, 2, g, u, d, NULL, &ty, err_), "up[1]");
    u[1] = u[0];
    OK(mc_op_grouped_experts(be, &tx, &too, 2, g, u, d, NULL, &ty, err_));
    REFUSED(mc_op_grouped_experts(be, &tx, &tob, 2, g, u, d, NULL, &ty, err_), "offsets[2]");
    REFUSED(mc_op_grouped_experts(be, &tx, &tos, 2, g, u, d, NULL, &ty, err_), "offsets[2] = 4");
    REFUSED(mc_op_grouped_experts(be, &tx, &too, 3, g, u, d, NULL, &ty, err_),
            "grouped_experts: offsets");
    REFUSED(mc_op_grouped_experts(be, &tx, &too, 2, g, u, d, NULL, &tx, err_),
            "grouped_experts: y");
    mc_experts_opts bad_o = {.swiglu_limit = -1.0f};
    REFUSED(mc_op_grouped_experts(be, &tx, &too, 2, g, u, d, &bad_o, &ty, err_),
            "opts.swiglu_limit");
    bad_o = (mc_experts_opts){.row_weight = &tob};
    REFUSED(mc_op_grouped_experts(be, &tx, &too, 2, g, u, d, &bad_o, &ty, err_),
            "opts.row_weight");
    bufs_free();
}

/* ---- layernorm ---- */

static void test_layernorm(void)
{
    enum { R = 5, D = 72 };
    float x[R * D], w[D], b[D], y[R * D];
    fill(x, R * D, 3.0f);
    for (int i = 0; i < R * D; i++)
        x[i] += 1.5f; /* a mean far from 0 */
    fill(w, D, 1.0f);
    fill(b, D, 0.5f);
    mc_tensor tx = tens(MC_DT_F32, R, D, x), ty = tens(MC_DT_F32, R, D, NULL);
    mc_tensor tw = tens(MC_DT_F32, 1, D, w), tb = tens(MC_DT_F32, 1, D, b);
    double want[R * D], tol[R * D];
    const float eps = 1e-5f;
    for (int pass = 0; pass < 3; pass++) { /* w and b; none; in place with w and b */
        const int wb = pass != 1;
        for (int r = 0; r < R; r++) {
            double mean = 0, var = 0;
            for (int i = 0; i < D; i++)
                mean += x[r * D + i];
            mean /= D;
            for (int i = 0; i < D; i++)
                var += (x[r * D + i] - mean) * (x[r * D + i] - mean);
            double inv = 1.0 / sqrt(var / D + eps);
            for (int i = 0; i < D; i++) {
                double v = (x[r * D + i] - mean) * inv;
                want[r * D + i] = wb ? v * w[i] + b[i] : v;
                tol[r * D + i] = 1e-6 * (1.0 + fabs(want[r * D + i]));
            }
        }
        mc_tensor *out = pass == 2 ? &tx : &ty;
        OK(mc_op_layernorm(be, &tx, wb ? &tw : NULL, wb ? &tb : NULL, eps, out, err_));
        down(out, y);
        compare(pass == 0 ? "layernorm" : pass == 1 ? "layernorm plain" : "layernorm in place", y,
                want, tol, R * D);
    }
    mc_tensor tshort = tens(MC_DT_F32, 1, D - 1, NULL);
    REFUSED(mc_op_layernorm(be, &ty, &tshort, NULL, eps, &ty, err_), "layernorm: w");
    REFUSED(mc_op_layernorm(be, &ty, NULL, &tshort, eps, &ty, err_), "layernorm: b");
    REFUSED(mc_op_layernorm(be, &ty, NULL, NULL, -1.0f, &ty, err_), "eps");
    bufs_free();
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    mc_err e;
    mc_err_clear(&e);
    if (mc_backend_cpu_init(&be, &e) != MC_OK) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    test_router();
    test_permute();
    test_layernorm();
    /* the expert products on every kernel path this machine runs */
    for (int p = 0; p < MC_KPATH_COUNT; p++) {
        if (!mc_kpath_supported((mc_kpath)p))
            continue;
        mc_kernels_set_path((mc_kpath)p);
        test_experts();
    }
    mc_backend_free(be);
    return check_report("test_backend_moe");
}
