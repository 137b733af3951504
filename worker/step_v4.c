/* step_v4.c - DeepSeek-V4 on the step executor: binding its weights as
 * backend tensors, its paged caches and scratch (the forward pass is in
 * step_v4_fwd.c).
 *
 * Caches, per layer, all F32 pages (n_blocks, block_size, ...) indexed by
 * the pool's block ids (the same ids for every kind of every layer):
 *   window K=V                      (hd)          every layer
 *   compressor kv and gate inputs   (W) twice     HCA (W = hd), CSA (W = 2 hd)
 *   compressed entries              (hd)          HCA / CSA, at the slot of
 *                                                 the window's last position
 *   indexer kv, gate inputs, keys   (2 id) twice, (id)   CSA
 * Every per-position row is kept (the window op reads only the last ones),
 * so a sequence's state is its block table and length: prefill chunks of
 * any size and block sizes that split windows need nothing more.
 *
 * One quirk is kept on purpose: the reference's CSA indexer pads its score
 * row with -inf up to the entries its cache can hold (cap / csa_rate), and
 * the tie order of its top-k (torch.topk on CPU) depends on that length;
 * the executor pads to the entries the sequence's block table can hold
 * (blocks * block_size / csa_rate), so exact ties (every head's ReLU at 0)
 * resolve as the reference's with cap = the capacity the caller reserved. */
#include "deepseek_v4_internal.h"
#include "step_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mc_status mc_step_v4_supported(const mc_model *m, mc_err *err) {
    const mc_model_desc *d = &m->d;
    if (!m->v4)
        return mc_err_set(err, MC_ERR_INTERNAL, "step executor: DeepSeek-V4 (%s) is not loaded",
                          d->model_type);
    if (m->lay.tp != 1 || m->lay.ep != 1 || m->lay.pp != 1)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "step executor: DeepSeek-V4 (%s) under a parallel layout (tp %d, ep %d, "
                          "pp %d; only one process is supported)",
                          d->model_type, m->lay.tp, m->lay.ep, m->lay.pp);
    if (d->v4.hc_mult < 1 || d->v4.hc_mult > 64)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "step executor: DeepSeek-V4 (%s) with hc_mult %d (1..64 supported)",
                          d->model_type, d->v4.hc_mult);
    if (d->rope.dim > d->head_dim || d->rope.dim > d->v4.index_head_dim)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "step executor: DeepSeek-V4 (%s) rotary dim %d wider than a head",
                          d->model_type, d->rope.dim);
    return MC_OK;
}

#define TRYS(x)                                                                                    \
    do {                                                                                           \
        if ((st = (x)) != MC_OK) return st;                                                        \
    } while (0)

/* A vector of n floats reshaped to (r, c). */
static mc_status vec2(mc_step_exec *ex, const float *v, int64_t r, int64_t c, const char *what,
                      mc_tensor *t, mc_err *err) {
    mc_status st;
    int64_t shape[2] = {r, c};
    TRYS(mc_step_vec(ex, v, r * c, what, t, err));
    return mc_tensor_reshape(t, 2, shape, t, err);
}

static mc_status bind_hc(mc_step_exec *ex, const mc_v4_hc *w, mc_tensor *fn, mc_tensor *base,
                         mc_tensor *scale, mc_err *err) {
    int mw = (2 + ex->m->d.v4.hc_mult) * ex->m->d.v4.hc_mult;
    mc_status st;
    TRYS(mc_step_mat(ex, &w->fn, "hc fn", fn, err));
    TRYS(mc_step_vec(ex, w->base, mw, "hc base", base, err));
    return mc_step_vec(ex, w->scale, 3, "hc scale", scale, err);
}

static mc_status bind_comp(mc_step_exec *ex, const mc_v4_comp *c, mc_step_v4_comp *o, mc_err *err) {
    int W = (1 + c->overlap) * c->cd;
    mc_status st;
    o->rate = c->rate;
    o->cd = c->cd;
    o->overlap = c->overlap;
    TRYS(mc_step_mat(ex, &c->wkv, "compressor wkv", &o->wkv, err));
    TRYS(mc_step_mat(ex, &c->wgate, "compressor wgate", &o->wgate, err));
    TRYS(vec2(ex, c->ape, c->rate, W, "compressor ape", &o->ape, err));
    return mc_step_vec(ex, c->norm, c->cd, "compressor norm", &o->norm, err);
}

static mc_status bind_ffn(mc_step_exec *ex, const mc_ffn_w *f, mc_tensor *g, mc_tensor *u,
                          mc_tensor *dn, mc_err *err) {
    mc_status st;
    TRYS(mc_step_mat(ex, &f->gate, "expert gate", g, err));
    TRYS(mc_step_mat(ex, &f->up, "expert up", u, err));
    return mc_step_mat(ex, &f->down, "expert down", dn, err);
}

/* F32 pages (n_blocks, block_size, w) in a new buffer. */
static mc_status pages(mc_step_exec *ex, int64_t w, const char *what, mc_tensor *t, mc_err *err) {
    mc_buffer *b;
    mc_status st;
    int64_t shape[3] = {ex->n_blocks, ex->block_size, w};
    size_t bytes = (size_t)ex->n_blocks * ex->block_size * (size_t)w * sizeof(float);
    TRYS(mc_step_alloc_buf(ex, bytes, what, &b, err));
    return mc_tensor_init(t, b, 0, MC_DT_F32, 3, shape, err);
}

static mc_status bind_layer(mc_step_exec *ex, int l, mc_err *err) {
    const mc_model_desc *d = &ex->m->d;
    const mc_v4_layer *w = &ex->m->v4->layers[l];
    mc_step_v4_layer *o = &ex->v4->layers[l];
    int H = d->hidden, E = d->n_experts, k = d->n_experts_per_tok;
    mc_status st;
    o->kind = w->kind;
    o->hash = w->hash;
    TRYS(mc_step_vec(ex, w->attn_norm, H, "attn_norm", &o->attn_norm, err));
    TRYS(mc_step_vec(ex, w->ffn_norm, H, "ffn_norm", &o->ffn_norm, err));
    TRYS(bind_hc(ex, &w->hc_attn, &o->hca_fn, &o->hca_base, &o->hca_scale, err));
    TRYS(bind_hc(ex, &w->hc_ffn, &o->hcf_fn, &o->hcf_base, &o->hcf_scale, err));
    TRYS(mc_step_mat(ex, &w->wq_a, "wq_a", &o->wq_a, err));
    TRYS(mc_step_vec(ex, w->q_norm, d->q_lora_rank, "q_norm", &o->q_norm, err));
    TRYS(mc_step_mat(ex, &w->wq_b, "wq_b", &o->wq_b, err));
    TRYS(mc_step_mat(ex, &w->wkv, "wkv", &o->wkv, err));
    TRYS(mc_step_vec(ex, w->kv_norm, d->head_dim, "kv_norm", &o->kv_norm, err));
    TRYS(mc_step_mat(ex, &w->wo_a, "wo_a", &o->wo_a, err));
    TRYS(mc_step_mat(ex, &w->wo_b, "wo_b", &o->wo_b, err));
    TRYS(mc_step_vec(ex, w->sinks, d->n_heads, "attn_sink", &o->sinks, err));
    TRYS(pages(ex, d->head_dim, "V4 window pages", &o->win_pages, err));
    if (w->kind != MC_V4_ATTN_SLIDING) {
        mc_step_v4_comp *c = &o->comp;
        TRYS(bind_comp(ex, &w->comp, c, err));
        TRYS(pages(ex, (1 + c->overlap) * c->cd, "V4 compressor kv pages", &c->kv_pages, err));
        TRYS(pages(ex, (1 + c->overlap) * c->cd, "V4 compressor gate pages", &c->gate_pages, err));
        TRYS(pages(ex, c->cd, "V4 compressed entry pages", &c->entry_pages, err));
    }
    if (w->kind == MC_V4_ATTN_CSA) {
        mc_step_v4_comp *c = &o->icomp;
        TRYS(bind_comp(ex, &w->icomp, c, err));
        TRYS(pages(ex, (1 + c->overlap) * c->cd, "V4 indexer kv pages", &c->kv_pages, err));
        TRYS(pages(ex, (1 + c->overlap) * c->cd, "V4 indexer gate pages", &c->gate_pages, err));
        TRYS(pages(ex, c->cd, "V4 indexer key pages", &c->entry_pages, err));
        TRYS(mc_step_mat(ex, &w->idx_wq_b, "indexer wq_b", &o->idx_wq_b, err));
        TRYS(mc_step_mat(ex, &w->idx_wproj, "indexer weights_proj", &o->idx_wproj, err));
    }
    TRYS(mc_step_mat(ex, &w->gate, "router", &o->gate, err));
    if (w->hash) {
        mc_buffer *b;
        size_t bytes = (size_t)d->vocab * (size_t)k * sizeof *w->tid2eid;
        TRYS(mc_step_wrap(ex, w->tid2eid, bytes, &b, err));
        TRYS(mc_tensor_init_2d(&o->tid2eid, b, 0, MC_DT_I32, d->vocab, k, err));
    } else {
        TRYS(mc_step_vec(ex, w->gate_bias, E, "router bias", &o->bias, err));
    }
    o->eg = calloc((size_t)3 * E, sizeof *o->eg);
    if (!o->eg)
        return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for layer %d's experts", l);
    o->eu = o->eg + E;
    o->ed = o->eg + 2 * E;
    for (int e = 0; e < E; e++)
        TRYS(bind_ffn(ex, &w->experts[e], &o->eg[e], &o->eu[e], &o->ed[e], err));
    return bind_ffn(ex, &w->shared, &o->sg, &o->su, &o->sd, err);
}

/* cos, sin and -sin tables (max_pos, rd/2) of one rotary, as the worker's
 * mc_v4_rope_cs computes them. */
static mc_status rope_tables(mc_step_exec *ex, const double *inv, int which, mc_err *err) {
    int half = ex->m->d.rope.dim / 2;
    size_t nt = (size_t)ex->max_pos * (size_t)half;
    float *t = mc_malloc_n(3 * nt + 1, sizeof *t); /* cos (P, half), sin, -sin */
    if (!t) return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for V4 RoPE tables");
    for (uint32_t p = 0; p < ex->max_pos; p++)
        mc_v4_rope_cs(inv, half, (int)p, t + (size_t)p * half, t + nt + (size_t)p * half);
    for (size_t i = 0; i < nt; i++)
        t[2 * nt + i] = -t[nt + i];
    mc_buffer *b;
    mc_status st;
    struct mc_step_v4 *v = ex->v4;
    if ((st = mc_step_alloc_buf(ex, 3 * nt * sizeof *t + 4, "V4 RoPE tables", &b, err)) == MC_OK &&
        (st = mc_buffer_upload(b, 0, t, 3 * nt * sizeof *t, err)) == MC_OK &&
        (st = mc_tensor_init_2d(&v->cs[which], b, 0, MC_DT_F32, ex->max_pos, half, err)) == MC_OK &&
        (st = mc_tensor_init_2d(&v->sn[which], b, nt * sizeof *t, MC_DT_F32, ex->max_pos, half,
                                err)) == MC_OK)
        st = mc_tensor_init_2d(&v->nsn[which], b, 2 * nt * sizeof *t, MC_DT_F32, ex->max_pos, half,
                               err);
    free(t);
    return st;
}

static void carve(mc_step_exec *ex, mc_step_carver *c, mc_err *err) {
    const mc_model_desc *d = &ex->m->d;
    const mc_v4_desc *v = &d->v4;
    struct mc_step_v4 *s = ex->v4;
    int64_t T = ex->max_tokens, H = d->hidden, k = v->hc_mult, mw = (2 + k) * k;
    int64_t nh = d->n_heads, hd = d->head_dim, ih = v->index_n_heads, id = v->index_head_dim;
    int64_t ke = d->n_experts_per_tok, E = d->n_experts;
    int64_t cw = 2 * hd > 2 * id ? 2 * hd : 2 * id;
    int64_t R = T < MC_STEP_HEAD_ROWS ? T : MC_STEP_HEAD_ROWS;
    mc_step_carve(c, &s->X, MC_DT_F32, 2, T, k * H, 0, err);
    mc_step_carve(c, &s->flat, MC_DT_F32, 2, T, k * H, 0, err);
    mc_step_carve(c, &s->mix, MC_DT_F32, 2, T, mw, 0, err);
    mc_step_carve(c, &s->mixh, MC_DT_F32, 2, T, k, 0, err);
    mc_step_carve(c, &s->post, MC_DT_F32, 2, T, k, 0, err);
    mc_step_carve(c, &s->comb, MC_DT_F32, 2, T, k * k, 0, err);
    mc_step_carve(c, &s->col, MC_DT_F32, 2, T, H, 0, err);
    mc_step_carve(c, &s->xn, MC_DT_F32, 2, T, H, 0, err);
    mc_step_carve(c, &s->y, MC_DT_F32, 2, T, H, 0, err);
    mc_step_carve(c, &s->ys, MC_DT_F32, 2, T, H, 0, err);
    mc_step_carve(c, &s->qres, MC_DT_F32, 2, T, d->q_lora_rank, 0, err);
    mc_step_carve(c, &s->q, MC_DT_F32, 3, T, nh, hd, err);
    mc_step_carve(c, &s->o, MC_DT_F32, 3, T, nh, hd, err);
    mc_step_carve(c, &s->kvn, MC_DT_F32, 2, T, hd, 0, err);
    mc_step_carve(c, &s->oa, MC_DT_F32, 2, T, (int64_t)v->o_groups * v->o_lora_rank, 0, err);
    mc_step_carve(c, &s->cp1, MC_DT_F32, 2, T, cw, 0, err);
    mc_step_carve(c, &s->cp2, MC_DT_F32, 2, T, cw, 0, err);
    mc_step_carve(c, &s->iq, MC_DT_F32, 3, T, ih > 0 ? ih : 1, id > 0 ? id : 1, err);
    mc_step_carve(c, &s->iw, MC_DT_F32, 2, T, ih > 0 ? ih : 1, 0, err);
    mc_step_carve(c, &s->sel, MC_DT_I32, 2, T, v->index_topk > 0 ? v->index_topk : 1, 0, err);
    mc_step_carve(c, &s->rlog, MC_DT_F32, 2, T, E, 0, err);
    mc_step_carve(c, &s->ids, MC_DT_I32, 2, T, ke, 0, err);
    mc_step_carve(c, &s->slot, MC_DT_I32, 2, T, ke, 0, err);
    mc_step_carve(c, &s->wts, MC_DT_F32, 2, T, ke, 0, err);
    mc_step_carve(c, &s->offsets, MC_DT_I32, 1, E + 1, 0, 0, err);
    mc_step_carve(c, &s->off1, MC_DT_I32, 1, 2, 0, 0, err);
    mc_step_carve(c, &s->xp, MC_DT_F32, 2, T * ke, H, 0, err);
    mc_step_carve(c, &s->yp, MC_DT_F32, 2, T * ke, H, 0, err);
    mc_step_carve(c, &s->tok, MC_DT_I32, 1, T, 0, 0, err);
    mc_step_carve(c, &s->seq, MC_DT_I32, 1, T, 0, 0, err);
    mc_step_carve(c, &s->pos, MC_DT_I32, 1, T, 0, 0, err);
    mc_step_carve(c, &s->rows, MC_DT_I32, 1, T, 0, 0, err);
    mc_step_carve(c, &s->irow, MC_DT_I32, 1, T, 0, 0, err);
    mc_step_carve(c, &s->hx, MC_DT_F32, 2, R, H, 0, err);
    mc_step_carve(c, &s->hlog, MC_DT_F32, 2, R, d->vocab, 0, err);
}

mc_status mc_step_v4_init(mc_step_exec *ex, mc_err *err) {
    const mc_model_desc *d = &ex->m->d;
    const mc_v4_model *vm = ex->m->v4;
    mc_status st;
    TRYS(mc_step_v4_supported(ex->m, err));
    ex->v4 = calloc(1, sizeof *ex->v4);
    if (!ex->v4) return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory");
    struct mc_step_v4 *v = ex->v4;
    v->layers = calloc((size_t)d->n_layers, sizeof *v->layers);
    if (!v->layers) return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory");
    TRYS(mc_step_mat(ex, &ex->m->embed, "embed", &ex->embed, err));
    TRYS(mc_step_mat(ex, &ex->m->lm_head, "lm_head", &ex->lm_head, err));
    TRYS(mc_step_vec(ex, ex->m->final_norm, d->hidden, "final_norm", &ex->final_norm, err));
    TRYS(mc_step_mat(ex, &vm->hc_head_fn, "hc_head fn", &v->head_fn, err));
    TRYS(mc_step_vec(ex, vm->hc_head_base, d->v4.hc_mult, "hc_head base", &v->head_base, err));
    TRYS(mc_step_vec(ex, vm->hc_head_scale, 1, "hc_head scale", &v->head_scale, err));
    for (int l = 0; l < d->n_layers; l++) {
        TRYS(bind_layer(ex, l, err));
        mc_step_upload_progress(ex, l, d->n_layers);
    }
    TRYS(rope_tables(ex, vm->inv_main, 0, err));
    TRYS(rope_tables(ex, vm->inv_comp, 1, err));
    mc_step_carver c = {0};
    carve(ex, &c, err);
    TRYS(mc_step_alloc_buf(ex, c.off, "V4 activations", &c.buf, err));
    c.off = 0;
    carve(ex, &c, err);
    return c.st;
}

void mc_step_v4_free(mc_step_exec *ex) {
    if (!ex->v4) return;
    for (int l = 0; ex->v4->layers && l < ex->m->d.n_layers; l++)
        free(ex->v4->layers[l].eg);
    free(ex->v4->layers);
    free(ex->v4);
    ex->v4 = NULL;
}
