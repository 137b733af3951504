/* deepseek_v4.c - DeepSeek-V4 weight binding: binds and checks every V4
 * tensor into m->v4 (deepseek_v4_internal.h), which the step executor
 * (step_v4.c, step_v4_fwd.c) turns into backend tensors. The forward pass
 * runs on the step executor. */
#include "deepseek_v4_internal.h"

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
