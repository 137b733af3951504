/* deepseek_v4.c - DeepSeek-V4: tensor binding, cache state, hyper-connections,
 * MoE and the decoder stack (attention lives in deepseek_v4_attn.c). */
#include "deepseek_v4_internal.h"
#include "nonfinite.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- loading ---- */

void mc_v4_free(mc_model *m)
{
    mc_v4_model *v = m->v4;
    if (!v)
        return;
    free(v); /* its arrays are on the model's owned list */
    m->v4 = NULL;
}

static void shape_str(int ndim, const int64_t *s, char *buf, size_t len)
{
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < ndim && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", d ? "," : "", (long long)s[d]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

/* Finds `name` and checks its shape against want[ndim]. */
static mc_status find(const mc_model *m, const char *name, int ndim, const int64_t *want,
                      const char *why, const st_tensor **out, mc_err *err)
{
    const st_tensor *t = st_checkpoint_find(m->ckpt, name);
    if (!t)
        return mc_err_set(err, MC_ERR_CONFIG,
                          "checkpoint has no tensor '%s' (needed by the deepseek_v4 config: %s)",
                          name, why);
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == want[i];
    if (!ok) {
        char have[128], exp[128];
        shape_str(t->ndim, t->shape, have, sizeof have);
        shape_str(ndim, want, exp, sizeof exp);
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: tensor '%s' has shape %s but the config implies %s (%s)", t->path,
                          t->name, have, exp, why);
    }
    *out = t;
    return MC_OK;
}

static mc_status bind_mat(const mc_model *m, const char *name, int rows, int cols, const char *why,
                          mc_mat *out, mc_err *err)
{
    const st_tensor *t;
    int64_t want[2] = {rows, cols};
    mc_status st = find(m, name, 2, want, why, &t, err);
    if (st != MC_OK)
        return st;
    if (t->dtype != MC_DT_F32 && t->dtype != MC_DT_F16 && t->dtype != MC_DT_BF16)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "%s: tensor '%s' has dtype %s (deepseek_v4 weights must be F32/F16/BF16)",
                          t->path, t->name, mc_dtype_name(t->dtype));
    memset(out, 0, sizeof *out);
    out->dtype = t->dtype;
    out->rows = rows;
    out->cols = cols;
    out->row_stride = (size_t)cols;
    out->data = t->data;
    return MC_OK;
}

/* Binds a float tensor of the given shape as an owned f32 copy. */
static mc_status bind_f32(mc_model *m, const char *name, int ndim, const int64_t *shape,
                          const char *why, float **out, mc_err *err)
{
    const st_tensor *t;
    mc_status st = find(m, name, ndim, shape, why, &t, err);
    if (st != MC_OK)
        return st;
    if (t->dtype != MC_DT_F32 && t->dtype != MC_DT_BF16 && t->dtype != MC_DT_F16)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (want F32/F16/BF16)",
                          t->path, t->name, mc_dtype_name(t->dtype));
    float *p = mc_model_own(m, mc_malloc_n((size_t)t->numel, sizeof *p));
    if (!p)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    st_tensor_to_f32(t, p);
    *out = p;
    return MC_OK;
}

static mc_status bind_vec(mc_model *m, const char *name, int n, const char *why, float **out,
                          mc_err *err)
{
    int64_t s[1] = {n};
    return bind_f32(m, name, 1, s, why, out, err);
}

#define TRY(x)                                                                                     \
    do {                                                                                           \
        mc_status st_ = (x);                                                                       \
        if (st_ != MC_OK)                                                                          \
            return st_;                                                                            \
    } while (0)

/* name = "model.layers.<l>.<suffix>" */
static const char *lname(char *buf, size_t len, int l, const char *suffix)
{
    snprintf(buf, len, "model.layers.%d.%s", l, suffix);
    return buf;
}

static mc_status bind_ffn(mc_model *m, const char *prefix, int inter, const char *why, mc_ffn_w *f,
                          mc_err *err)
{
    int H = m->d.hidden;
    char n[600];
    snprintf(n, sizeof n, "%s.w1.weight", prefix);
    TRY(bind_mat(m, n, inter, H, why, &f->gate, err));
    snprintf(n, sizeof n, "%s.w3.weight", prefix);
    TRY(bind_mat(m, n, inter, H, why, &f->up, err));
    snprintf(n, sizeof n, "%s.w2.weight", prefix);
    TRY(bind_mat(m, n, H, inter, why, &f->down, err));
    return MC_OK;
}

static mc_status bind_hc(mc_model *m, int l, const char *site, mc_v4_hc *hc, mc_err *err)
{
    int k = m->d.v4.hc_mult, H = m->d.hidden, mix = (2 + k) * k;
    char n[512], s[64];
    snprintf(s, sizeof s, "hc_%s_fn", site);
    TRY(bind_mat(m, lname(n, sizeof n, l, s), mix, k * H, "(2+hc_mult)*hc_mult x hc_mult*hidden_size",
                 &hc->fn, err));
    snprintf(s, sizeof s, "hc_%s_base", site);
    TRY(bind_vec(m, lname(n, sizeof n, l, s), mix, "(2+hc_mult)*hc_mult", &hc->base, err));
    snprintf(s, sizeof s, "hc_%s_scale", site);
    TRY(bind_vec(m, lname(n, sizeof n, l, s), 3, "pre/post/comb scales", &hc->scale, err));
    return MC_OK;
}

static mc_status bind_comp(mc_model *m, int l, const char *prefix, int rate, int cd, int overlap,
                           mc_v4_comp *c, mc_err *err)
{
    int H = m->d.hidden, w = (1 + overlap) * cd;
    char n[512], s[256];
    c->rate = rate;
    c->cd = cd;
    c->overlap = overlap;
    const char *why = overlap ? "2*width x hidden_size (overlapping windows)" : "width x hidden_size";
    snprintf(s, sizeof s, "%s.wkv.weight", prefix);
    TRY(bind_mat(m, lname(n, sizeof n, l, s), w, H, why, &c->wkv, err));
    snprintf(s, sizeof s, "%s.wgate.weight", prefix);
    TRY(bind_mat(m, lname(n, sizeof n, l, s), w, H, why, &c->wgate, err));
    snprintf(s, sizeof s, "%s.ape", prefix);
    int64_t ape[2] = {rate, w};
    TRY(bind_f32(m, lname(n, sizeof n, l, s), 2, ape, "compress rate x projection width", &c->ape,
                 err));
    snprintf(s, sizeof s, "%s.norm.weight", prefix);
    TRY(bind_vec(m, lname(n, sizeof n, l, s), cd, "compressed entry width", &c->norm, err));
    return MC_OK;
}

static mc_status bind_tid2eid(mc_model *m, int l, mc_v4_layer *L, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    char n[512];
    const st_tensor *t;
    int64_t want[2] = {d->vocab, d->n_experts_per_tok};
    TRY(find(m, lname(n, sizeof n, l, "ffn.gate.tid2eid"), 2, want, "vocab_size x num_experts_per_tok",
             &t, err));
    if (t->dtype != MC_DT_I64 && t->dtype != MC_DT_I32)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (want I64/I32)",
                          t->path, t->name, mc_dtype_name(t->dtype));
    size_t cnt = (size_t)t->numel;
    L->tid2eid = mc_model_own(m, mc_malloc_n(cnt, sizeof *L->tid2eid));
    if (!L->tid2eid)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    const uint8_t *p = t->data;
    for (size_t i = 0; i < cnt; i++) {
        int64_t e;
        if (t->dtype == MC_DT_I64) {
            memcpy(&e, p + 8 * i, 8);
        } else {
            int32_t e32;
            memcpy(&e32, p + 4 * i, 4);
            e = e32;
        }
        if (e < 0 || e >= d->n_experts)
            return mc_err_set(err, MC_ERR_CONFIG,
                              "%s: tensor '%s' maps token %zu to expert %lld, outside [0, %d)",
                              t->path, t->name, i / (size_t)d->n_experts_per_tok, (long long)e,
                              d->n_experts);
        L->tid2eid[i] = (int32_t)e;
    }
    return MC_OK;
}

static mc_status bind_layer(mc_model *m, int l, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    const mc_v4_desc *v = &d->v4;
    mc_v4_layer *L = &m->v4->layers[l];
    int H = d->hidden, nh = d->n_heads, hd = d->head_dim, qr = d->q_lora_rank;
    int G = v->o_groups, olr = v->o_lora_rank;
    char n[512];
    L->kind = v->layer_attn[l];
    L->hash = v->layer_hash[l];
    TRY(bind_vec(m, lname(n, sizeof n, l, "attn_norm.weight"), H, "hidden_size", &L->attn_norm, err));
    TRY(bind_vec(m, lname(n, sizeof n, l, "ffn_norm.weight"), H, "hidden_size", &L->ffn_norm, err));
    TRY(bind_hc(m, l, "attn", &L->hc_attn, err));
    TRY(bind_hc(m, l, "ffn", &L->hc_ffn, err));
    TRY(bind_mat(m, lname(n, sizeof n, l, "attn.wq_a.weight"), qr, H, "q_lora_rank x hidden_size",
                 &L->wq_a, err));
    TRY(bind_vec(m, lname(n, sizeof n, l, "attn.q_norm.weight"), qr, "q_lora_rank", &L->q_norm, err));
    TRY(bind_mat(m, lname(n, sizeof n, l, "attn.wq_b.weight"), nh * hd, qr,
                 "heads*head_dim x q_lora_rank", &L->wq_b, err));
    TRY(bind_mat(m, lname(n, sizeof n, l, "attn.wkv.weight"), hd, H, "head_dim x hidden_size",
                 &L->wkv, err));
    TRY(bind_vec(m, lname(n, sizeof n, l, "attn.norm.weight"), hd, "head_dim", &L->kv_norm, err));
    TRY(bind_mat(m, lname(n, sizeof n, l, "attn.wo_a.weight"), G * olr, nh * hd / G,
                 "o_groups*o_lora_rank x heads*head_dim/o_groups", &L->wo_a, err));
    TRY(bind_mat(m, lname(n, sizeof n, l, "attn.wo_b.weight"), H, G * olr,
                 "hidden_size x o_groups*o_lora_rank", &L->wo_b, err));
    TRY(bind_vec(m, lname(n, sizeof n, l, "attn.attn_sink"), nh, "num_attention_heads", &L->sinks,
                 err));
    if (L->kind == MC_V4_ATTN_HCA)
        TRY(bind_comp(m, l, "attn.compressor", v->hca_rate, hd, 0, &L->comp, err));
    if (L->kind == MC_V4_ATTN_CSA) {
        int inh = v->index_n_heads, icd = v->index_head_dim;
        TRY(bind_comp(m, l, "attn.compressor", v->csa_rate, hd, 1, &L->comp, err));
        TRY(bind_comp(m, l, "attn.indexer.compressor", v->csa_rate, icd, 1, &L->icomp, err));
        TRY(bind_mat(m, lname(n, sizeof n, l, "attn.indexer.wq_b.weight"), inh * icd, qr,
                     "index_n_heads*index_head_dim x q_lora_rank", &L->idx_wq_b, err));
        TRY(bind_mat(m, lname(n, sizeof n, l, "attn.indexer.weights_proj.weight"), inh, H,
                     "index_n_heads x hidden_size", &L->idx_wproj, err));
    }
    /* MoE */
    int E = d->n_experts;
    TRY(bind_mat(m, lname(n, sizeof n, l, "ffn.gate.weight"), E, H, "n_routed_experts x hidden_size",
                 &L->gate, err));
    if (L->hash) {
        TRY(bind_tid2eid(m, l, L, err));
    } else {
        TRY(bind_vec(m, lname(n, sizeof n, l, "ffn.gate.bias"), E,
                     "n_routed_experts (score correction bias of a 'moe' layer)", &L->gate_bias, err));
    }
    L->experts = mc_model_own(m, mc_calloc_n((size_t)E, sizeof *L->experts));
    if (!L->experts)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    for (int e = 0; e < E; e++) {
        char p[128];
        snprintf(p, sizeof p, "model.layers.%d.ffn.experts.%d", l, e);
        TRY(bind_ffn(m, p, d->moe_inter, "moe_intermediate_size", &L->experts[e], err));
    }
    char p[128];
    snprintf(p, sizeof p, "model.layers.%d.ffn.shared_experts", l);
    TRY(bind_ffn(m, p, d->shared_inter, "moe_intermediate_size (shared expert)", &L->shared, err));
    return MC_OK;
}

static void inv_freq(double theta, int dim, int yarn, double factor, double orig, double bf,
                     double bs, double *out)
{
    mc_rope_desc r;
    memset(&r, 0, sizeof r);
    r.dim = dim;
    r.theta = theta;
    r.scaling = yarn ? MC_ROPE_SCALE_YARN : MC_ROPE_SCALE_NONE;
    r.factor = factor;
    r.orig_max_pos = orig;
    r.beta_fast = bf;
    r.beta_slow = bs;
    mc_rope_inv_freq(&r, out);
}

mc_status mc_v4_load(mc_model *m, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    const mc_v4_desc *v = &d->v4;
    int H = d->hidden, k = v->hc_mult, half = d->rope.dim / 2;
    if (d->family != MC_FAM_DEEPSEEK_V4 || k < 1)
        return mc_err_set(err, MC_ERR_INTERNAL, "mc_v4_load called for a non-V4 description");
    m->v4 = calloc(1, sizeof *m->v4);
    if (!m->v4)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    mc_v4_model *vm = m->v4;
    TRY(bind_mat(m, "model.embed_tokens.weight", d->vocab, H, "vocab_size x hidden_size", &m->embed,
                 err));
    if (d->tie_embeddings)
        m->lm_head = m->embed;
    else
        TRY(bind_mat(m, "head.weight", d->vocab, H, "vocab_size x hidden_size", &m->lm_head, err));
    TRY(bind_vec(m, "model.norm.weight", H, "hidden_size", &m->final_norm, err));
    TRY(bind_mat(m, "model.hc_head.hc_fn", k, k * H, "hc_mult x hc_mult*hidden_size",
                 &vm->hc_head_fn, err));
    TRY(bind_vec(m, "model.hc_head.hc_base", k, "hc_mult", &vm->hc_head_base, err));
    TRY(bind_vec(m, "model.hc_head.hc_scale", 1, "one scale", &vm->hc_head_scale, err));
    vm->layers = mc_model_own(m, mc_calloc_n((size_t)d->n_layers, sizeof *vm->layers));
    vm->inv_main = mc_model_own(m, mc_calloc_n((size_t)half + 1, sizeof *vm->inv_main));
    vm->inv_comp = mc_model_own(m, mc_calloc_n((size_t)half + 1, sizeof *vm->inv_comp));
    if (!vm->layers || !vm->inv_main || !vm->inv_comp)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    inv_freq(d->rope.theta, d->rope.dim, 0, 1, 0, 0, 0, vm->inv_main);
    inv_freq(v->compress_theta, d->rope.dim, v->compress_yarn, v->compress_factor,
             v->compress_orig_max_pos, v->compress_beta_fast, v->compress_beta_slow, vm->inv_comp);
    for (int l = 0; l < d->n_layers; l++)
        TRY(bind_layer(m, l, err));
    return MC_OK;
}

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
