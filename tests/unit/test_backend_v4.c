/* test_backend_v4.c - the DeepSeek-V4 ops of backend.h on the CPU backend
 * against the per-call reference's functions (tests/ref: mc_v4_sinkhorn,
 * mc_v4_select_topk, mc_v4_route) and direct double-precision references written here:
 *   v4_hc_pre / v4_hc_post   the hyper-connection mapping and write-back
 *   v4_compress              pooling over paged per-position inputs, block
 *                            sizes that split windows, shuffled block ids
 *   v4_index_topk            scores and the reference's tie order (-inf padding)
 *   v4_attention             sinks, window, all entries (HCA) or selected (CSA)
 *   v4_hash_route            tid2eid routing with sqrt-softplus weights
 * and the refusals: bad shapes name the argument, bad contents the token. */
#include "backend.h"
#include "check.h"
#include "kernels.h"
#include "ref.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mc_backend *be;
static mc_err e;
static mc_buffer *bufs[256];
static int n_bufs;

static uint64_t rng = 0x243F6A8885A308D3ull;
static float runi(float lo, float hi) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return lo + (hi - lo) * (float)((rng >> 11) * (1.0 / 9007199254740992.0));
}

static void fill(float *x, size_t n, float s) {
    for (size_t i = 0; i < n; i++)
        x[i] = runi(-s, s);
}

/* A tensor of the given shape in its own buffer, filled from host (or zero). */
static mc_tensor tens(mc_dtype dt, int ndim, int64_t a, int64_t b, int64_t c, const void *host) {
    int64_t shape[3] = {a, b, c};
    size_t n = (size_t)a * (size_t)(ndim > 1 ? b : 1) * (size_t)(ndim > 2 ? c : 1);
    size_t bytes = n * mc_dtype_size(dt);
    mc_buffer *buf;
    mc_tensor t;
    memset(&t, 0, sizeof t);
    if (mc_buffer_alloc(be, bytes, &buf, &e) != MC_OK) return t;
    bufs[n_bufs++] = buf;
    mc_tensor_init(&t, buf, 0, dt, ndim, shape, &e);
    if (host)
        mc_buffer_upload(buf, 0, host, bytes, &e);
    else
        mc_buffer_memset(buf, 0, 0, bytes, &e);
    return t;
}

static float *hostp(const mc_tensor *t) {
    return (float *)((char *)mc_buffer_host(t->buf) + t->offset);
}

static double max_rel(const float *got, const double *want, size_t n) {
    double m = 0, d = 0;
    for (size_t i = 0; i < n; i++) {
        m = fabs(want[i]) > m ? fabs(want[i]) : m;
        d = fabs(got[i] - want[i]) > d ? fabs(got[i] - want[i]) : d;
    }
    return d / (m > 0 ? m : 1);
}

/* ---- hyper-connections ---- */

static void test_hc(void) {
    enum { N = 5, K = 4, H = 24, MW = (2 + K) * K };
    float x[N * K * H], mix[N * MW], base[MW], scale[3] = {0.7f, 1.3f, 0.9f}, y[N * H];
    fill(x, sizeof x / sizeof *x, 2);
    fill(mix, sizeof mix / sizeof *mix, 3);
    fill(base, MW, 1);
    fill(y, N * H, 1);
    mc_tensor tx = tens(MC_DT_F32, 2, N, K * H, 0, x), tm = tens(MC_DT_F32, 2, N, MW, 0, mix);
    mc_tensor tb = tens(MC_DT_F32, 1, MW, 0, 0, base), ts = tens(MC_DT_F32, 1, 3, 0, 0, scale);
    mc_tensor tp = tens(MC_DT_F32, 2, N, K, 0, NULL), tc = tens(MC_DT_F32, 2, N, K * K, 0, NULL);
    mc_tensor tcol = tens(MC_DT_F32, 2, N, H, 0, NULL), ty = tens(MC_DT_F32, 2, N, H, 0, y);
    mc_v4_hc_opts o = {.hc = K, .iters = 20, .eps = 1e-6f};
    CHECK(mc_op_v4_hc_pre(be, &tx, &tm, &tb, &ts, &o, &tp, &tc, &tcol, &e) == MC_OK);
    double wcol[N * H], wpost[N * K], dev_comb = 0;
    for (int t = 0; t < N; t++) {
        const float *m = mix + t * MW;
        float lg[K * K], comb[K * K];
        for (int i = 0; i < K * K; i++)
            lg[i] = m[2 * K + i] * scale[2] + base[2 * K + i];
        mc_v4_sinkhorn(lg, K, 20, 1e-6f, comb);
        for (int i = 0; i < K * K; i++) { /* the worker's function: bit-exact */
            float got = hostp(&tc)[t * K * K + i];
            dev_comb = fabs(got - comb[i]) > dev_comb ? fabs(got - comb[i]) : dev_comb;
        }
        for (int h = 0; h < H; h++)
            wcol[t * H + h] = 0;
        for (int j = 0; j < K; j++) {
            double pre = 1.0 / (1.0 + exp(-((double)m[j] * scale[0] + base[j]))) + 1e-6;
            wpost[t * K + j] = 2.0 / (1.0 + exp(-((double)m[K + j] * scale[1] + base[K + j])));
            for (int h = 0; h < H; h++)
                wcol[t * H + h] += pre * x[(t * K + j) * H + h];
        }
    }
    double e1 = max_rel(hostp(&tcol), wcol, N * H), e2 = max_rel(hostp(&tp), wpost, N * K);
    printf("v4_hc_pre: collapsed %.3g, post %.3g, comb vs mc_v4_sinkhorn %.3g\n", e1, e2, dev_comb);
    CHECK(e1 < 1e-6 && e2 < 1e-6 && dev_comb == 0);
    /* comb is doubly stochastic to the Sinkhorn's precision */
    for (int t = 0; t < N; t++)
        for (int k = 0; k < K; k++) {
            double cs = 0;
            for (int j = 0; j < K; j++)
                cs += hostp(&tc)[t * K * K + j * K + k];
            CHECK(fabs(cs - 1) < 1e-3);
        }
    /* write-back */
    double wx[N * K * H];
    for (int t = 0; t < N; t++)
        for (int k = 0; k < K; k++)
            for (int h = 0; h < H; h++) {
                double v = (double)hostp(&tp)[t * K + k] * y[t * H + h];
                for (int j = 0; j < K; j++)
                    v += (double)hostp(&tc)[t * K * K + j * K + k] * x[(t * K + j) * H + h];
                wx[(t * K + k) * H + h] = v;
            }
    CHECK(mc_op_v4_hc_post(be, &tx, &tp, &tc, &ty, &e) == MC_OK);
    double e3 = max_rel(hostp(&tx), wx, N * K * H);
    printf("v4_hc_post: %.3g\n", e3);
    CHECK(e3 < 1e-6);
    /* the HyperHead form: mix (n, k), base [k], scale [1] */
    mc_tensor th = tens(MC_DT_F32, 2, N, K, 0, mix), tb1 = tens(MC_DT_F32, 1, K, 0, 0, base);
    mc_tensor ts1 = tens(MC_DT_F32, 1, 1, 0, 0, scale);
    CHECK(mc_op_v4_hc_pre(be, &tx, &th, &tb1, &ts1, &o, NULL, NULL, &tcol, &e) == MC_OK);
    for (int t = 0; t < N; t++)
        for (int h = 0; h < H; h++) {
            double v = 0;
            for (int j = 0; j < K; j++)
                v += (1.0 / (1.0 + exp(-((double)mix[t * K + j] * scale[0] + base[j]))) + 1e-6) *
                     hostp(&tx)[(t * K + j) * H + h];
            wcol[t * H + h] = v;
        }
    CHECK(max_rel(hostp(&tcol), wcol, N * H) < 1e-6);
    /* refusals name the argument */
    mc_err_clear(&e);
    CHECK(mc_op_v4_hc_pre(be, &tx, &tm, &tb, &ts, &o, &tp, NULL, &tcol, &e) == MC_ERR_ARG);
    mc_err_clear(&e);
    CHECK(mc_op_v4_hc_post(be, &tx, &tp, &tc, &tx, &e) == MC_ERR_ARG);
    CHECK(strstr(e.msg, "v4_hc_post") != NULL);
    mc_err_clear(&e);
}

/* ---- paged fixtures: 2 sequences, shuffled blocks ---- */

enum { BS = 3, NB = 12, MAXB = 6 };
static int32_t bt[2][MAXB] = {{7, 2, 9, 0, 4, 11}, {5, 1, 10, 3, 8, 6}};

static int64_t slot(int s, int p) {
    return (int64_t)bt[s][p / BS] * BS + p % BS;
}

/* ix for tokens (seq[t], pos[t]). */
static mc_kv_index index_of(int n, const int32_t *seq, const int32_t *pos) {
    mc_kv_index ix;
    ix.block_table = tens(MC_DT_I32, 2, 2, MAXB, 0, bt);
    ix.seq = tens(MC_DT_I32, 1, n, 0, 0, seq);
    ix.pos = tens(MC_DT_I32, 1, n, 0, 0, pos);
    return ix;
}

/* ---- compressors ---- */

static void test_compress(int overlap) {
    enum { R = 4, CD = 16, RD = 8, L = 17, P = 64 };
    int W = (1 + overlap) * CD;
    float *kv = malloc(sizeof(float) * 2 * L * W), *g = malloc(sizeof(float) * 2 * L * W);
    float ape[R * 2 * CD], norm[CD], cs[P * RD / 2], sn[P * RD / 2];
    fill(kv, (size_t)2 * L * W, 1);
    fill(g, (size_t)2 * L * W, 2);
    fill(ape, R * W, 1);
    fill(norm, CD, 1);
    for (int p = 0; p < P; p++)
        for (int i = 0; i < RD / 2; i++) {
            cs[p * RD / 2 + i] = cosf(0.1f * p * (i + 1));
            sn[p * RD / 2 + i] = sinf(0.1f * p * (i + 1));
        }
    mc_tensor kp = tens(MC_DT_F32, 3, NB, BS, W, NULL), gp = tens(MC_DT_F32, 3, NB, BS, W, NULL);
    mc_tensor op = tens(MC_DT_F32, 3, NB, BS, CD, NULL), ta = tens(MC_DT_F32, 2, R, W, 0, ape);
    mc_tensor tn = tens(MC_DT_F32, 1, CD, 0, 0, norm), tc = tens(MC_DT_F32, 2, P, RD / 2, 0, cs);
    mc_tensor ts = tens(MC_DT_F32, 2, P, RD / 2, 0, sn);
    for (int s = 0; s < 2; s++)
        for (int p = 0; p < L; p++) {
            memcpy(hostp(&kp) + slot(s, p) * W, kv + (size_t)(s * L + p) * W, sizeof(float) * W);
            memcpy(hostp(&gp) + slot(s, p) * W, g + (size_t)(s * L + p) * W, sizeof(float) * W);
        }
    /* in two calls (positions 0..9, then 10..16 of both), tokens interleaved */
    int32_t seq[2 * L], pos[2 * L];
    int n = 0;
    for (int part = 0; part < 2; part++) {
        int n0 = n;
        for (int p = part ? 10 : 0; p < (part ? L : 10); p++)
            for (int s = 0; s < 2; s++) {
                seq[n] = s;
                pos[n++] = p;
            }
        mc_kv_index ix = index_of(n - n0, seq + n0, pos + n0);
        mc_v4_comp_opts o = {.rate = R, .overlap = overlap, .eps = 1e-6f};
        CHECK(mc_op_v4_compress(be, &kp, &gp, &ta, &tn, &tc, &ts, &ix, &o, &op, &e) == MC_OK);
    }
    double worst = 0;
    for (int s = 0; s < 2; s++)
        for (int w = 0; w < L / R; w++) {
            double ent[CD], ss = 0;
            for (int c = 0; c < CD; c++) {
                double gv[2 * R], vv[2 * R], mx = -INFINITY, den = 0, acc = 0;
                int ns = 0;
                if (overlap && w > 0)
                    for (int j = 0; j < R; j++) {
                        int p = (w - 1) * R + j;
                        gv[ns] = g[(size_t)(s * L + p) * W + c] + ape[j * W + c];
                        vv[ns++] = kv[(size_t)(s * L + p) * W + c];
                    }
                for (int j = 0; j < R; j++) {
                    int p = w * R + j, col = (overlap ? CD : 0) + c;
                    gv[ns] = g[(size_t)(s * L + p) * W + col] + ape[j * W + col];
                    vv[ns++] = kv[(size_t)(s * L + p) * W + col];
                }
                for (int j = 0; j < ns; j++)
                    mx = gv[j] > mx ? gv[j] : mx;
                for (int j = 0; j < ns; j++)
                    den += exp(gv[j] - mx);
                for (int j = 0; j < ns; j++)
                    acc += exp(gv[j] - mx) / den * vv[j];
                ent[c] = acc;
                ss += acc * acc;
            }
            double inv = 1.0 / sqrt(ss / CD + 1e-6);
            for (int c = 0; c < CD; c++)
                ent[c] *= inv * norm[c];
            for (int i = 0; i < RD / 2; i++) { /* interleaved pairs of the trailing RD dims */
                double c0 = cs[w * R * RD / 2 + i], s0 = sn[w * R * RD / 2 + i];
                double a = ent[CD - RD + 2 * i], b = ent[CD - RD + 2 * i + 1];
                ent[CD - RD + 2 * i] = a * c0 - b * s0;
                ent[CD - RD + 2 * i + 1] = a * s0 + b * c0;
            }
            double r = max_rel(hostp(&op) + slot(s, (w + 1) * R - 1) * CD, ent, CD);
            worst = r > worst ? r : worst;
        }
    printf("v4_compress (%s): %d entries in 2 chunks, block size %d: max relative error %.3g\n",
           overlap ? "CSA, overlapping" : "HCA", 2 * (L / R), BS, worst);
    CHECK(worst < 1e-5);
    /* a block id past the pages is refused, naming the token */
    bt[1][2] = NB;
    int32_t s1 = 1, p1 = 7;
    mc_kv_index ix = index_of(1, &s1, &p1);
    mc_v4_comp_opts o = {.rate = R, .overlap = overlap, .eps = 1e-6f};
    mc_err_clear(&e);
    CHECK(mc_op_v4_compress(be, &kp, &gp, &ta, &tn, &tc, &ts, &ix, &o, &op, &e) == MC_ERR_ARG);
    CHECK(strstr(e.msg, "token 0") != NULL);
    mc_err_clear(&e);
    bt[1][2] = 10;
    free(kv);
    free(g);
}

/* ---- indexer ---- */

static void test_index(void) {
    enum { R = 4, IH = 3, ID = 8, K = 2, NROW = 12 };
    int32_t seq[3] = {0, 1, 0}, pos[3] = {17, 16, 2};
    float iq[3 * IH * ID], w[3 * IH];
    fill(iq, sizeof iq / sizeof *iq, 1);
    fill(w, 3 * IH, 1);
    mc_tensor kp = tens(MC_DT_F32, 3, NB, BS, ID, NULL);
    float keys[2][4][ID];
    for (int s = 0; s < 2; s++)
        for (int x = 0; x < 4; x++) {
            fill(keys[s][x], ID, 1);
            if (s == 1 && x >= 1) /* every head's dot negative: exact ties at 0 */
                for (int i = 0; i < ID; i++)
                    keys[s][x][i] = 0;
            memcpy(hostp(&kp) + slot(s, (x + 1) * R - 1) * ID, keys[s][x], sizeof keys[s][x]);
        }
    mc_tensor tq = tens(MC_DT_F32, 3, 3, IH, ID, iq), tw = tens(MC_DT_F32, 2, 3, IH, 0, w);
    mc_tensor sel = tens(MC_DT_I32, 2, 3, K, 0, NULL);
    int32_t nrow[3] = {NROW, 9, 0}; /* per token: padded, padded less, none (row = visible) */
    mc_tensor trow = tens(MC_DT_I32, 1, 3, 0, 0, nrow);
    mc_kv_index ix = index_of(3, seq, pos);
    mc_v4_index_opts o = {
        .rate = R, .k = K, .n_row = &trow, .score_scale = 0.35f, .weight_scale = 0.57f};
    CHECK(mc_op_v4_index_topk(be, &tq, &tw, &kp, &ix, &o, &sel, &e) == MC_OK);
    int32_t *got = (int32_t *)hostp(&sel);
    for (int t = 0; t < 3; t++) {
        int nv = (pos[t] + 1) / R, m = 0, want[K], row = nrow[t] > nv ? nrow[t] : nv;
        mc_v4_sel q[NROW];
        for (int x = 0; x < row; x++) {
            q[x].i = x;
            q[x].v = -INFINITY;
            if (x >= nv) continue;
            float acc = 0;
            for (int h = 0; h < IH; h++) {
                float dp = mc_dot(iq + (t * IH + h) * ID, keys[seq[t]][x], ID);
                acc += (dp > 0 ? dp : 0) * 0.35f * (w[t * IH + h] * 0.57f);
            }
            q[x].v = acc;
        }
        mc_v4_select_topk(q, row, K < row ? K : row);
        for (int j = 0; j < (K < row ? K : row); j++)
            if (q[j].i < nv) want[m++] = q[j].i;
        for (; m < K; m++)
            want[m] = -1;
        for (int j = 0; j < K; j++)
            CHECK(got[t * K + j] == want[j]);
    }
    printf("v4_index_topk: sel %d %d | %d %d (ties at 0) | %d %d (as mc_v4_select_topk)\n", got[0],
           got[1], got[2], got[3], got[4], got[5]);
    CHECK(got[4] == -1 && got[5] == -1); /* position 2 sees no entry */
}

/* ---- attention ---- */

static void test_attention(int mode) /* 0 window only, 1 all entries, 2 selected */
{
    enum { NH = 3, HD = 16, WIN = 5, R = 4, N = 4, L = 17 };
    int32_t seq[N] = {0, 1, 1, 0}, pos[N] = {16, 3, 11, 7},
            sel[N * 2] = {3, 0, -1, -1, 2, -1, 1, -1};
    float q[N * NH * HD], sinks[NH], rows[2][L][HD], ents[2][L / R][HD];
    fill(q, sizeof q / sizeof *q, 1);
    fill(sinks, NH, 1);
    mc_tensor kp = tens(MC_DT_F32, 3, NB, BS, HD, NULL), cp = tens(MC_DT_F32, 3, NB, BS, HD, NULL);
    for (int s = 0; s < 2; s++) {
        for (int p = 0; p < L; p++) {
            fill(rows[s][p], HD, 1);
            memcpy(hostp(&kp) + slot(s, p) * HD, rows[s][p], sizeof rows[s][p]);
        }
        for (int x = 0; x < L / R; x++) {
            fill(ents[s][x], HD, 1);
            memcpy(hostp(&cp) + slot(s, (x + 1) * R - 1) * HD, ents[s][x], sizeof ents[s][x]);
        }
    }
    mc_tensor tq = tens(MC_DT_F32, 3, N, NH, HD, q), tsk = tens(MC_DT_F32, 1, NH, 0, 0, sinks);
    mc_tensor ty = tens(MC_DT_F32, 3, N, NH, HD, NULL), tsel = tens(MC_DT_I32, 2, N, 2, 0, sel);
    mc_kv_index ix = index_of(N, seq, pos);
    mc_v4_attn_opts o = {.window = WIN, .rate = R, .scale = 0.25f};
    CHECK(mc_op_v4_attention(be, &tq, &kp, mode ? &cp : NULL, &tsk, mode == 2 ? &tsel : NULL, &ix,
                             &o, &ty, &e) == MC_OK);
    double want[N * NH * HD];
    for (int t = 0; t < N; t++) {
        const float *src[L + L / R];
        int nr = 0, s = seq[t], p = pos[t];
        for (int i = p - WIN + 1 > 0 ? p - WIN + 1 : 0; i <= p; i++)
            src[nr++] = rows[s][i];
        if (mode == 1)
            for (int x = 0; x < (p + 1) / R; x++)
                src[nr++] = ents[s][x];
        if (mode == 2)
            for (int j = 0; j < 2; j++)
                if (sel[t * 2 + j] >= 0) src[nr++] = ents[s][sel[t * 2 + j]];
        for (int h = 0; h < NH; h++) {
            double sc[L + L / R], mx = sinks[h], den;
            const float *qh = q + (t * NH + h) * HD;
            for (int i = 0; i < nr; i++) {
                double d = 0;
                for (int c = 0; c < HD; c++)
                    d += (double)qh[c] * src[i][c];
                sc[i] = d * 0.25;
                mx = sc[i] > mx ? sc[i] : mx;
            }
            den = exp(sinks[h] - mx);
            for (int i = 0; i < nr; i++)
                den += exp(sc[i] - mx);
            for (int c = 0; c < HD; c++) {
                double v = 0;
                for (int i = 0; i < nr; i++)
                    v += exp(sc[i] - mx) / den * src[i][c];
                want[(t * NH + h) * HD + c] = v;
            }
        }
    }
    double r = max_rel(hostp(&ty), want, N * NH * HD);
    printf("v4_attention (%s): max relative error %.3g\n",
           mode == 0   ? "window"
           : mode == 1 ? "window + all entries"
                       : "window + selected",
           r);
    CHECK(r < 1e-5);
    if (mode == 2) { /* an entry the token cannot see yet is refused */
        int32_t bad[N * 2] = {3, 0, 1, -1, 2, -1, 1, -1}; /* token 1 (pos 3) sees entry 0 only */
        mc_tensor tb = tens(MC_DT_I32, 2, N, 2, 0, bad);
        mc_err_clear(&e);
        CHECK(mc_op_v4_attention(be, &tq, &kp, &cp, &tsk, &tb, &ix, &o, &ty, &e) == MC_ERR_ARG);
        CHECK(strstr(e.msg, "token 1") != NULL);
        mc_err_clear(&e);
    }
}

/* ---- hash routing ---- */

static void test_hash(void) {
    enum { N = 6, E = 8, K = 3, VOC = 10 };
    float lg[N * E];
    int32_t tab[VOC * K], tok[N] = {3, 0, 9, 3, 5, 7};
    fill(lg, N * E, 4);
    lg[2] = 25; /* past softplus' threshold */
    for (int i = 0; i < VOC * K; i++)
        tab[i] = (i * 5 + i / K) % E;
    mc_model_desc d;
    memset(&d, 0, sizeof d);
    d.n_experts = E;
    d.n_experts_per_tok = K;
    d.routed_scale = 1.5f;
    d.v4.score = MC_V4_SCORE_SQRTSOFTPLUS;
    mc_tensor tl = tens(MC_DT_F32, 2, N, E, 0, lg), tt = tens(MC_DT_I32, 1, N, 0, 0, tok);
    mc_tensor ttab = tens(MC_DT_I32, 2, VOC, K, 0, tab);
    mc_tensor ids = tens(MC_DT_I32, 2, N, K, 0, NULL), wts = tens(MC_DT_F32, 2, N, K, 0, NULL);
    mc_router_opts o = {
        .score = MC_ROUTE_SQRTSOFTPLUS, .k = K, .renorm = 1, .norm_eps = 1e-20f, .scale = 1.5f};
    CHECK(mc_op_v4_hash_route(be, &tl, &tt, &ttab, &o, &ids, &wts, &e) == MC_OK);
    int same = 1;
    for (int t = 0; t < N; t++) {
        int idx[K];
        float wt[K];
        mc_v4_route(&d, lg + t * E, NULL, tab + tok[t] * K, idx, wt);
        for (int j = 0; j < K; j++)
            same &=
                ((int32_t *)hostp(&ids))[t * K + j] == idx[j] && hostp(&wts)[t * K + j] == wt[j];
    }
    printf("v4_hash_route: %s mc_v4_route\n", same ? "bit-exact with" : "DIFFERS from");
    CHECK(same);
    tok[4] = VOC; /* a token past the table is refused */
    mc_tensor tb = tens(MC_DT_I32, 1, N, 0, 0, tok);
    mc_err_clear(&e);
    CHECK(mc_op_v4_hash_route(be, &tl, &tb, &ttab, &o, &ids, &wts, &e) == MC_ERR_ARG);
    CHECK(strstr(e.msg, "token 4") != NULL);
    mc_err_clear(&e);
}

int main(void) {
    mc_err_clear(&e);
    if (mc_backend_cpu_init(&be, &e) != MC_OK) {
        fprintf(stderr, "test_backend_v4: %s\n", e.msg);
        return 1;
    }
    test_hc();
    test_compress(0);
    test_compress(1);
    test_index();
    test_attention(0);
    test_attention(1);
    test_attention(2);
    test_hash();
    for (int i = n_bufs; i > 0; i--)
        mc_buffer_free(bufs[i - 1]);
    mc_backend_free(be);
    return check_report("test_backend_v4");
}
