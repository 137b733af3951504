/* ref_deepseek_v4.c - the per-call reference implementation kept for tests
 * (ref.h; single process: the engine runs worker/step_v4*.c). DeepSeek-V4
 * cache state, hyper-connections, MoE and the decoder stack over the weights
 * worker/deepseek_v4.c binds (attention is in ref_deepseek_v4_attn.c). */
#include "nonfinite.h"
#include "ref_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- cache ---- */

static void kv_state_free(mc_v4_kv *s)
{
    if (!s)
        return;
    for (int l = 0; s->layers && l < s->n_layers; l++) {
        mc_v4_layer_state *ls = &s->layers[l];
        free(ls->win);
        free(ls->comp.ring_kv);
        free(ls->comp.ring_gate);
        free(ls->comp.entries);
        free(ls->icomp.ring_kv);
        free(ls->icomp.ring_gate);
        free(ls->icomp.entries);
    }
    free(s->layers);
    free(s);
}

void mc_v4_kv_free(mc_kv *kv)
{
    kv_state_free(kv->ext);
    kv->ext = NULL;
}

void mc_v4_kv_reset(mc_kv *kv)
{
    mc_v4_kv *s = kv->ext;
    for (int l = 0; s && l < s->n_layers; l++)
        s->layers[l].comp.n_entries = s->layers[l].icomp.n_entries = 0;
}

static int comp_state_init(const mc_v4_comp *c, int cap, mc_v4_comp_state *cs)
{
    size_t w = (size_t)(1 + c->overlap) * (size_t)c->cd;
    cs->max_entries = cap / c->rate;
    cs->n_entries = 0;
    cs->ring_kv = mc_malloc_n((size_t)2 * c->rate * w, sizeof(float));
    cs->ring_gate = mc_malloc_n((size_t)2 * c->rate * w, sizeof(float));
    cs->entries = mc_malloc_n((size_t)(cs->max_entries > 0 ? cs->max_entries : 1) * c->cd,
                              sizeof(float));
    return cs->ring_kv && cs->ring_gate && cs->entries ? 0 : -1;
}

mc_status mc_v4_kv_init(const mc_model *m, mc_kv *kv, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    if (!m->v4)
        return mc_err_set(err, MC_ERR_INTERNAL, "deepseek_v4 model is not loaded");
    mc_v4_kv *s = calloc(1, sizeof *s);
    if (!s)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    kv->ext = s;
    kv->n_layers = 0; /* the generic k/v arrays stay unused */
    s->layers = calloc((size_t)d->n_layers, sizeof *s->layers);
    if (!s->layers)
        goto nomem;
    s->n_layers = d->n_layers;
    int win = d->v4.sliding_window < kv->cap ? d->v4.sliding_window : kv->cap;
    for (int l = 0; l < d->n_layers; l++) {
        const mc_v4_layer *L = &m->v4->layers[l];
        mc_v4_layer_state *ls = &s->layers[l];
        ls->win = mc_malloc_n((size_t)win * d->head_dim, sizeof *ls->win);
        if (!ls->win)
            goto nomem;
        if (L->kind != MC_V4_ATTN_SLIDING && comp_state_init(&L->comp, kv->cap, &ls->comp))
            goto nomem;
        if (L->kind == MC_V4_ATTN_CSA && comp_state_init(&L->icomp, kv->cap, &ls->icomp))
            goto nomem;
    }
    return MC_OK;
nomem:
    return mc_err_set(err, MC_ERR_NOMEM, "out of memory for a deepseek_v4 cache of %d tokens",
                      kv->cap);
}

/* ---- hyper-connections ---- */

void mc_v4_sinkhorn(const float *logits, int hc, int iters, float eps, float *comb)
{
    for (int j = 0; j < hc; j++) {
        memcpy(comb + j * hc, logits + j * hc, (size_t)hc * sizeof *comb);
        mc_softmax(comb + j * hc, hc);
        for (int k = 0; k < hc; k++)
            comb[j * hc + k] += eps;
    }
    for (int it = 0; it < iters; it++) {
        if (it > 0)
            for (int j = 0; j < hc; j++) { /* rows */
                float s = 0;
                for (int k = 0; k < hc; k++)
                    s += comb[j * hc + k];
                for (int k = 0; k < hc; k++)
                    comb[j * hc + k] /= s + eps;
            }
        for (int k = 0; k < hc; k++) { /* columns */
            float s = 0;
            for (int j = 0; j < hc; j++)
                s += comb[j * hc + k];
            for (int j = 0; j < hc; j++)
                comb[j * hc + k] /= s + eps;
        }
    }
}

/* RMS normalization without weight. */
static void rms_plain(float *out, const float *x, int n, float eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++)
        out[i] = x[i] * inv;
}

/* Mapping of one site for n tokens: X [n, hc, H] -> post [n, hc], comb [n, hc, hc],
 * collapsed [n, H]. flat [n, hc*H] and mix [n, (2+hc)*hc] are scratch. */
static void hc_pre(const mc_model *m, const mc_v4_hc *w, const float *X, int n, float *post,
                   float *comb, float *collapsed, float *flat, float *mix)
{
    const mc_v4_desc *v = &m->d.v4;
    int k = v->hc_mult, H = m->d.hidden, kH = k * H, mw = (2 + k) * k;
    for (int t = 0; t < n; t++)
        rms_plain(flat + (size_t)t * kH, X + (size_t)t * kH, kH, m->d.norm_eps);
    mc_matmul(&w->fn, flat, n, kH, mix, mw);
    float lg[64 * 64];
    for (int t = 0; t < n; t++) {
        const float *mx = mix + (size_t)t * mw;
        float *pt = post + (size_t)t * k, *ct = comb + (size_t)t * k * k;
        float *col = collapsed + (size_t)t * H;
        const float *xt = X + (size_t)t * kH;
        memset(col, 0, (size_t)H * sizeof *col);
        for (int j = 0; j < k; j++) {
            float pre = mc_sigmoid(mx[j] * w->scale[0] + w->base[j]) + v->hc_eps;
            pt[j] = 2.0f * mc_sigmoid(mx[k + j] * w->scale[1] + w->base[k + j]);
            mc_axpy(col, pre, xt + (size_t)j * H, H);
        }
        for (int i = 0; i < k * k; i++)
            lg[i] = mx[2 * k + i] * w->scale[2] + w->base[2 * k + i];
        mc_v4_sinkhorn(lg, k, v->hc_sinkhorn_iters, v->hc_eps, ct);
    }
}

/* X[t, k] = post[t, k] * y[t] + sum_j comb[t, j, k] * X[t, j]. */
static void hc_post(int k, int H, float *X, int n, const float *post, const float *comb,
                    const float *y, float *tmp)
{
    for (int t = 0; t < n; t++) {
        float *xt = X + (size_t)t * k * H;
        const float *ct = comb + (size_t)t * k * k;
        for (int o = 0; o < k; o++) {
            float *dst = tmp + (size_t)o * H;
            for (int h = 0; h < H; h++)
                dst[h] = post[(size_t)t * k + o] * y[(size_t)t * H + h];
            for (int j = 0; j < k; j++)
                mc_axpy(dst, ct[j * k + o], xt + (size_t)j * H, H);
        }
        memcpy(xt, tmp, (size_t)k * H * sizeof *xt);
    }
}

/* ---- MoE ---- */

float mc_v4_router_score(mc_v4_score f, float x)
{
    if (f == MC_V4_SCORE_SIGMOID)
        return mc_sigmoid(x);
    float sp = x > 20.0f ? x : log1pf(expf(x)); /* softplus, threshold 20 like torch */
    return sqrtf(sp);
}

void mc_v4_route(const mc_model_desc *d, const float *logits, const float *bias,
                 const int32_t *hash_row, int *idx, float *weight)
{
    int E = d->n_experts, k = d->n_experts_per_tok;
    float scores[E];
    mc_v4_sel q[E];
    for (int e = 0; e < E; e++) {
        scores[e] = mc_v4_router_score(d->v4.score, logits[e]);
        q[e].v = bias ? scores[e] + bias[e] : scores[e];
        q[e].i = e;
    }
    if (!hash_row)
        mc_v4_select_topk(q, E, k);
    float sum = 0;
    for (int j = 0; j < k; j++) {
        int e = hash_row ? hash_row[j] : q[j].i;
        idx[j] = e;
        weight[j] = scores[e];
        sum += scores[e];
    }
    for (int j = 0; j < k; j++)
        weight[j] = weight[j] / (sum + 1e-20f) * d->routed_scale;
}

/* SwiGLU with the V4 clamp: down(silu(min(gate, L)) * clamp(up, -L, L)). */
static void ffn_clamped(const mc_ffn_w *f, const float *x, int n, float *y, float *scratch,
                        float lim)
{
    int I = f->gate.rows, H = f->gate.cols;
    float *g = scratch, *u = scratch + (size_t)n * I;
    mc_matmul(&f->gate, x, n, H, g, I);
    mc_matmul(&f->up, x, n, H, u, I);
    for (size_t i = 0; i < (size_t)n * I; i++) {
        float gv = g[i] > lim ? lim : g[i];
        float uv = u[i] > lim ? lim : u[i] < -lim ? -lim : u[i];
        g[i] = mc_silu(gv) * uv;
    }
    mc_matmul(&f->down, g, n, I, y, H);
}

static mc_status v4_moe(const mc_model *m, const mc_v4_layer *L, const float *x, int n,
                        const int64_t *tokens, float *y, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    int E = d->n_experts, k = d->n_experts_per_tok, H = d->hidden;
    int I = d->moe_inter > d->shared_inter ? d->moe_inter : d->shared_inter;
    size_t nk = (size_t)n * k;
    mc_status st = MC_OK;
    float *logits = mc_malloc_n((size_t)n * E, sizeof *logits);
    int *idx = mc_malloc_n(nk, sizeof *idx);
    float *wt = mc_malloc_n(nk, sizeof *wt);
    int *rows = mc_malloc_n(nk, sizeof *rows);
    float *xin = mc_malloc_n(nk * H, sizeof *xin);
    float *yout = mc_malloc_n((nk > (size_t)n ? nk : (size_t)n) * H, sizeof *yout);
    float *scratch = mc_malloc_n((nk > (size_t)n ? nk : (size_t)n) * 2 * I, sizeof *scratch);
    if (!logits || !idx || !wt || !rows || !xin || !yout || !scratch) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory in the deepseek_v4 MoE layer");
        goto done;
    }
    mc_matmul(&L->gate, x, n, H, logits, E);
    for (int t = 0; t < n; t++)
        mc_v4_route(d, logits + (size_t)t * E, L->gate_bias,
                    L->hash ? L->tid2eid + (size_t)tokens[t] * k : NULL, idx + (size_t)t * k,
                    wt + (size_t)t * k);
    memset(y, 0, (size_t)n * H * sizeof *y);
    for (int e = 0; e < E; e++) {
        int ne = 0;
        for (size_t i = 0; i < nk; i++)
            if (idx[i] == e) {
                rows[ne] = (int)i;
                memcpy(xin + (size_t)ne * H, x + (i / k) * H, (size_t)H * sizeof *x);
                ne++;
            }
        if (ne == 0)
            continue;
        ffn_clamped(&L->experts[e], xin, ne, yout, scratch, d->v4.swiglu_limit);
        for (int j = 0; j < ne; j++)
            mc_axpy(y + (size_t)(rows[j] / k) * H, wt[rows[j]], yout + (size_t)j * H, H);
    }
    ffn_clamped(&L->shared, x, n, yout, scratch, d->v4.swiglu_limit);
    for (size_t i = 0; i < (size_t)n * H; i++)
        y[i] += yout[i];
done:
    free(logits);
    free(idx);
    free(wt);
    free(rows);
    free(xin);
    free(yout);
    free(scratch);
    return st;
}

/* ---- decoder stack ---- */

mc_status mc_v4_forward(mc_model *m, mc_kv *kv, const int64_t *tokens, int n, float *logits,
                        bool last_only, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    const mc_v4_model *vm = m->v4;
    int H = d->hidden, k = d->v4.hc_mult, kH = k * H, mw = (2 + k) * k;
    if (!vm || !kv->ext)
        return mc_err_set(err, MC_ERR_INTERNAL, "deepseek_v4 model or cache is not initialized");
    if (n <= 0 || n > kv->cap - kv->len)
        return mc_err_set(err, MC_ERR_ARG, "%d tokens do not fit the cache (%d used of %d)", n,
                          kv->len, kv->cap);
    mc_status st = MC_OK;
    size_t nH = (size_t)n * H;
    float *X = mc_malloc_n(nH * k, sizeof *X);
    float *flat = mc_malloc_n(nH * k, sizeof *flat);
    float *tmp = mc_malloc_n((size_t)kH, sizeof *tmp);
    float *mix = mc_malloc_n((size_t)n * mw, sizeof *mix);
    float *post = mc_malloc_n((size_t)n * k, sizeof *post);
    float *comb = mc_malloc_n((size_t)n * k * k, sizeof *comb);
    float *col = mc_malloc_n(nH, sizeof *col);
    float *xn = mc_malloc_n(nH, sizeof *xn);
    float *y = mc_malloc_n(nH, sizeof *y);
    if (!X || !flat || !tmp || !mix || !post || !comb || !col || !xn || !y) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory for a forward pass of %d tokens", n);
        goto done;
    }
    for (int t = 0; t < n; t++) {
        mc_mat_row_f32(&m->embed, (int)tokens[t], X + (size_t)t * kH);
        for (int j = 1; j < k; j++)
            memcpy(X + (size_t)t * kH + (size_t)j * H, X + (size_t)t * kH, (size_t)H * sizeof *X);
    }
    if ((st = mc_nf_check(m, MC_NF_INPUT, 0, X, n, (size_t)kH, kv->len, tokens, err)) != MC_OK)
        goto done;
    for (int l = 0; l < d->n_layers; l++) {
        const mc_v4_layer *L = &vm->layers[l];
        hc_pre(m, &L->hc_attn, X, n, post, comb, col, flat, mix);
        for (int t = 0; t < n; t++)
            mc_rmsnorm(xn + (size_t)t * H, col + (size_t)t * H, L->attn_norm, H, d->norm_eps);
        if ((st = mc_v4_attention(m, l, kv, xn, n, y, err)) != MC_OK)
            goto done;
        hc_post(k, H, X, n, post, comb, y, tmp);
        if ((st = mc_nf_check(m, MC_NF_ATTN, l, X, n, (size_t)kH, kv->len, NULL, err)) != MC_OK)
            goto done;
        hc_pre(m, &L->hc_ffn, X, n, post, comb, col, flat, mix);
        for (int t = 0; t < n; t++)
            mc_rmsnorm(xn + (size_t)t * H, col + (size_t)t * H, L->ffn_norm, H, d->norm_eps);
        if ((st = v4_moe(m, L, xn, n, tokens, y, err)) != MC_OK)
            goto done;
        hc_post(k, H, X, n, post, comb, y, tmp);
        if ((st = mc_nf_check(m, MC_NF_FFN, l, X, n, (size_t)kH, kv->len, NULL, err)) != MC_OK)
            goto done;
    }
    kv->len += n;
    if (logits) {
        int t0 = last_only ? n - 1 : 0;
        for (int t = t0; t < n; t++)
            rms_plain(flat + (size_t)t * kH, X + (size_t)t * kH, kH, d->norm_eps);
        mc_matmul(&vm->hc_head_fn, flat + (size_t)t0 * kH, n - t0, kH, mix, k);
        for (int t = t0; t < n; t++) {
            float *c = col + (size_t)t * H;
            memset(c, 0, (size_t)H * sizeof *c);
            for (int j = 0; j < k; j++) {
                float pre = mc_sigmoid(mix[(size_t)(t - t0) * k + j] * vm->hc_head_scale[0] +
                                       vm->hc_head_base[j]) +
                            d->v4.hc_eps;
                mc_axpy(c, pre, X + (size_t)t * kH + (size_t)j * H, H);
            }
            mc_rmsnorm(xn + (size_t)t * H, c, m->final_norm, H, d->norm_eps);
        }
        mc_matmul(&m->lm_head, xn + (size_t)t0 * H, n - t0, H, logits, d->vocab);
        st = mc_nf_check(m, MC_NF_HEAD, 0, logits, n - t0, (size_t)d->vocab, kv->len - n + t0,
                         NULL, err);
    }
done:
    free(X);
    free(flat);
    free(tmp);
    free(mix);
    free(post);
    free(comb);
    free(col);
    free(xn);
    free(y);
    return st;
}
