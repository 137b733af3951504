/* step_v4_fwd.c - DeepSeek-V4's forward pass on one step, backend ops only:
 * embed into hc streams; per layer the hyper-connection mapping (rmsnorm,
 * matmul, v4_hc_pre), the attention (q LoRA, per-head norm, RoPE, the K=V
 * row to the window pages, compressor inputs to their pages and the
 * entries they complete, the CSA indexer's top-k, v4_attention, inverse
 * value RoPE, grouped output projection), v4_hc_post, the same mapping for
 * the MoE (router top-k or hash routing, permute, clamped grouped experts,
 * unpermute, the shared expert), v4_hc_post; last the HyperHead, the final
 * norm and the LM head on the rows that want logits. */
#include "deepseek_v4_internal.h"
#include "nonfinite.h"
#include "step_internal.h"

#include <math.h>
#include <string.h>

#define TRYS(x)                                                                                    \
    do {                                                                                           \
        if ((st = (x)) != MC_OK) return st;                                                        \
    } while (0)

/* The step's views: n rows of every scratch tensor. */
typedef struct {
    mc_tensor X, flat, mix, mixh, post, comb, col, xn, y, ys, qres;
    mc_tensor q, o, q2, o2; /* (n, nh, hd), (n, nh * hd) */
    mc_tensor kvn, oa, cp1, cp2, iq, iq2, iw, sel, rlog, ids, slot, wts, xp, yp, tok, irow;
    mc_kv_index ix;
} v4_views;

static mc_status cut(const mc_tensor *t, int64_t n, mc_tensor *out, mc_err *err) {
    return mc_tensor_view_rows(t, 0, n, out, err);
}

/* (n, a, b) -> (n, a * b) */
static mc_status flat2(const mc_tensor *t, mc_tensor *out, mc_err *err) {
    int64_t shape[2] = {t->shape[0], t->shape[1] * t->shape[2]};
    return mc_tensor_reshape(t, 2, shape, out, err);
}

static mc_status views(mc_step_exec *ex, int64_t n, v4_views *s, mc_err *err) {
    struct mc_step_v4 *v = ex->v4;
    mc_status st;
    const mc_tensor *src[] = {&v->X,   &v->flat, &v->mix, &v->mixh, &v->post, &v->comb, &v->col,
                              &v->xn,  &v->y,    &v->ys,  &v->qres, &v->q,    &v->o,    &v->kvn,
                              &v->oa,  &v->cp1,  &v->cp2, &v->iq,   &v->iw,   &v->sel,  &v->rlog,
                              &v->ids, &v->slot, &v->wts, &v->tok,  &v->seq,  &v->pos,  &v->irow};
    mc_tensor *dst[] = {&s->X,   &s->flat, &s->mix, &s->mixh, &s->post,   &s->comb,   &s->col,
                        &s->xn,  &s->y,    &s->ys,  &s->qres, &s->q,      &s->o,      &s->kvn,
                        &s->oa,  &s->cp1,  &s->cp2, &s->iq,   &s->iw,     &s->sel,    &s->rlog,
                        &s->ids, &s->slot, &s->wts, &s->tok,  &s->ix.seq, &s->ix.pos, &s->irow};
    for (size_t i = 0; i < sizeof src / sizeof src[0]; i++)
        TRYS(cut(src[i], n, dst[i], err));
    int64_t ke = ex->m->d.n_experts_per_tok;
    TRYS(cut(&v->xp, n * ke, &s->xp, err));
    TRYS(cut(&v->yp, n * ke, &s->yp, err));
    TRYS(flat2(&s->q, &s->q2, err));
    TRYS(flat2(&s->o, &s->o2, err));
    return flat2(&s->iq, &s->iq2, err);
}

/* In-place rotation of the trailing rd dims of every head of x (n, heads, d) or (n, d). */
static mc_status rope_tail(mc_step_exec *ex, const mc_tensor *x, int rd, const v4_views *s,
                           const mc_tensor *cs, const mc_tensor *sn, mc_err *err) {
    mc_tensor v;
    mc_status st;
    TRYS(mc_tensor_view_cols(x, mc_tensor_cols(x) - rd, rd, &v, err));
    return mc_op_rope(ex->be, &v, &s->ix.pos, cs, sn, 1, err);
}

/* One hyper-connection site: xn = norm(collapse(X)), post / comb kept. */
static mc_status hc_site(mc_step_exec *ex, v4_views *s, const mc_tensor *fn, const mc_tensor *base,
                         const mc_tensor *scale, const mc_tensor *norm, mc_err *err) {
    const mc_model_desc *d = &ex->m->d;
    mc_v4_hc_opts o = {.hc = d->v4.hc_mult, .iters = d->v4.hc_sinkhorn_iters, .eps = d->v4.hc_eps};
    mc_status st;
    TRYS(mc_op_rmsnorm(ex->be, &s->X, NULL, d->norm_eps, &s->flat, err));
    TRYS(mc_op_matmul(ex->be, fn, &s->flat, &s->mix, err));
    TRYS(
        mc_op_v4_hc_pre(ex->be, &s->X, &s->mix, base, scale, &o, &s->post, &s->comb, &s->col, err));
    return mc_op_rmsnorm(ex->be, &s->col, norm, d->norm_eps, &s->xn, err);
}

/* Projects xn through compressor c, writes its inputs to the pages and the
 * entries this step completes. */
static mc_status compress(mc_step_exec *ex, v4_views *s, const mc_step_v4_comp *c,
                          const mc_tensor *cs, const mc_tensor *sn, mc_err *err) {
    int W = (1 + c->overlap) * c->cd;
    mc_tensor kvp, gp;
    mc_status st;
    mc_v4_comp_opts o = {.rate = c->rate, .overlap = c->overlap, .eps = ex->m->d.norm_eps};
    TRYS(mc_tensor_view_cols(&s->cp1, 0, W, &kvp, err));
    TRYS(mc_tensor_view_cols(&s->cp2, 0, W, &gp, err));
    TRYS(mc_op_matmul(ex->be, &c->wkv, &s->xn, &kvp, err));
    TRYS(mc_op_matmul(ex->be, &c->wgate, &s->xn, &gp, err));
    TRYS(mc_op_kv_write(ex->be, &s->ix, &kvp, (mc_tensor *)&c->kv_pages, err));
    TRYS(mc_op_kv_write(ex->be, &s->ix, &gp, (mc_tensor *)&c->gate_pages, err));
    return mc_op_v4_compress(ex->be, &c->kv_pages, &c->gate_pages, &c->ape, &c->norm, cs, sn,
                             &s->ix, &o, (mc_tensor *)&c->entry_pages, err);
}

/* s->y = attention of s->xn, layer l. */
static mc_status attention(mc_step_exec *ex, int l, v4_views *s, mc_err *err) {
    const mc_model_desc *d = &ex->m->d;
    const mc_v4_desc *v = &d->v4;
    struct mc_step_v4 *x = ex->v4;
    mc_step_v4_layer *L = &x->layers[l];
    int rd = d->rope.dim, r = L->kind == MC_V4_ATTN_SLIDING ? 0 : 1;
    int G = v->o_groups, olr = v->o_lora_rank;
    int64_t gw = (int64_t)d->n_heads * d->head_dim / G;
    const mc_tensor *cs = &x->cs[r], *sn = &x->sn[r];
    mc_backend *be = ex->be;
    mc_status st;
    /* queries */
    TRYS(mc_op_matmul(be, &L->wq_a, &s->xn, &s->qres, err));
    TRYS(mc_op_rmsnorm(be, &s->qres, &L->q_norm, d->norm_eps, &s->qres, err));
    TRYS(mc_op_matmul(be, &L->wq_b, &s->qres, &s->q2, err));
    TRYS(mc_op_rmsnorm(be, &s->q, NULL, d->norm_eps, &s->q, err));
    TRYS(rope_tail(ex, &s->q, rd, s, cs, sn, err));
    /* the K=V row */
    TRYS(mc_op_matmul(be, &L->wkv, &s->xn, &s->kvn, err));
    TRYS(mc_op_rmsnorm(be, &s->kvn, &L->kv_norm, d->norm_eps, &s->kvn, err));
    TRYS(rope_tail(ex, &s->kvn, rd, s, cs, sn, err));
    TRYS(mc_op_kv_write(be, &s->ix, &s->kvn, &L->win_pages, err));
    /* compressors, indexer */
    if (L->kind != MC_V4_ATTN_SLIDING) TRYS(compress(ex, s, &L->comp, cs, sn, err));
    if (L->kind == MC_V4_ATTN_CSA) {
        TRYS(compress(ex, s, &L->icomp, cs, sn, err));
        TRYS(mc_op_matmul(be, &L->idx_wq_b, &s->qres, &s->iq2, err));
        TRYS(rope_tail(ex, &s->iq, rd, s, cs, sn, err));
        TRYS(mc_op_matmul(be, &L->idx_wproj, &s->xn, &s->iw, err));
        mc_v4_index_opts io = {.rate = L->icomp.rate,
                               .k = v->index_topk,
                               .n_row = &s->irow,
                               .score_scale = 1.0f / sqrtf((float)v->index_head_dim),
                               .weight_scale = 1.0f / sqrtf((float)v->index_n_heads)};
        TRYS(mc_op_v4_index_topk(be, &s->iq, &s->iw, &L->icomp.entry_pages, &s->ix, &io, &s->sel,
                                 err));
    }
    mc_v4_attn_opts ao = {.window = v->sliding_window,
                          .rate = L->kind == MC_V4_ATTN_SLIDING ? 0 : L->comp.rate,
                          .scale = d->attn_scale};
    TRYS(mc_op_v4_attention(be, &s->q, &L->win_pages,
                            L->kind == MC_V4_ATTN_SLIDING ? NULL : &L->comp.entry_pages, &L->sinks,
                            L->kind == MC_V4_ATTN_CSA ? &s->sel : NULL, &s->ix, &ao, &s->o, err));
    TRYS(rope_tail(ex, &s->o, rd, s, cs, &x->nsn[r], err)); /* undo the value's rotation */
    /* grouped low-rank output */
    for (int g = 0; g < G; g++) {
        mc_tensor wg, og, ag;
        TRYS(mc_tensor_view_rows(&L->wo_a, (int64_t)g * olr, olr, &wg, err));
        TRYS(mc_tensor_view_cols(&s->o2, g * gw, gw, &og, err));
        TRYS(mc_tensor_view_cols(&s->oa, (int64_t)g * olr, olr, &ag, err));
        TRYS(mc_op_matmul(be, &wg, &og, &ag, err));
    }
    return mc_op_matmul(be, &L->wo_b, &s->oa, &s->y, err);
}

/* s->y = MoE of s->xn, layer l (routed experts, then the shared one). */
static mc_status moe(mc_step_exec *ex, int l, v4_views *s, mc_err *err) {
    const mc_model_desc *d = &ex->m->d;
    struct mc_step_v4 *x = ex->v4;
    mc_step_v4_layer *L = &x->layers[l];
    mc_backend *be = ex->be;
    mc_status st;
    mc_router_opts ro = {.score = d->v4.score == MC_V4_SCORE_SIGMOID ? MC_ROUTE_SIGMOID
                                                                     : MC_ROUTE_SQRTSOFTPLUS,
                         .k = d->n_experts_per_tok,
                         .renorm = 1,
                         .norm_eps = 1e-20f,
                         .scale = d->routed_scale};
    mc_experts_opts eo = {.swiglu_limit = d->v4.swiglu_limit};
    TRYS(mc_op_matmul(be, &L->gate, &s->xn, &s->rlog, err));
    if (L->hash)
        TRYS(mc_op_v4_hash_route(be, &s->rlog, &s->tok, &L->tid2eid, &ro, &s->ids, &s->wts, err));
    else
        TRYS(mc_op_router_topk(be, &s->rlog, &L->bias, &ro, &s->ids, &s->wts, err));
    TRYS(mc_op_moe_permute(be, &s->xn, &s->ids, &s->xp, &s->slot, &x->offsets, err));
    TRYS(mc_op_grouped_experts(be, &s->xp, &x->offsets, d->n_experts, L->eg, L->eu, L->ed, &eo,
                               &s->yp, err));
    TRYS(mc_op_moe_unpermute_weighted(be, &s->yp, &s->slot, &s->wts, &s->y, err));
    TRYS(mc_op_grouped_experts(be, &s->xn, &x->off1, 1, &L->sg, &L->su, &L->sd, &eo, &s->ys, err));
    return mc_op_add(be, &s->y, &s->ys, &s->y, err);
}

/* HyperHead, final norm and LM head on the hx->nl rows into logits. */
static mc_status head(mc_step_exec *ex, const mc_step_host_ix *hx, v4_views *s, float *logits,
                      mc_err *err) {
    const mc_model_desc *d = &ex->m->d;
    struct mc_step_v4 *x = ex->v4;
    mc_backend *be = ex->be;
    mc_v4_hc_opts o = {.hc = d->v4.hc_mult, .iters = 0, .eps = d->v4.hc_eps};
    int64_t R = mc_tensor_rows(&x->hx), V = d->vocab;
    mc_status st;
    TRYS(mc_op_rmsnorm(be, &s->X, NULL, d->norm_eps, &s->flat, err));
    TRYS(mc_op_matmul(be, &x->head_fn, &s->flat, &s->mixh, err));
    TRYS(mc_op_v4_hc_pre(be, &s->X, &s->mixh, &x->head_base, &x->head_scale, &o, NULL, NULL,
                         &s->col, err));
    TRYS(mc_op_rmsnorm(be, &s->col, &ex->final_norm, d->norm_eps, &s->xn, err));
    for (int64_t r0 = 0; r0 < hx->nl; r0 += R) {
        int64_t nr = hx->nl - r0 < R ? hx->nl - r0 : R;
        mc_tensor rv, hv, lv;
        TRYS(mc_tensor_view_rows(&x->rows, r0, nr, &rv, err));
        TRYS(cut(&x->hx, nr, &hv, err));
        TRYS(cut(&x->hlog, nr, &lv, err));
        TRYS(mc_op_embed(be, &s->xn, &rv, 0, &hv, err)); /* gathers the rows */
        TRYS(mc_op_matmul(be, &ex->lm_head, &hv, &lv, err));
        TRYS(mc_step_nf_rows(ex, MC_NF_HEAD, &lv, r0, err));
        if (ex->top) /* candidates in place of the rows (mc_step_exec_run_top) */
            TRYS(mc_step_top_rows(ex, &lv, r0, err));
        else
            TRYS(mc_tensor_download(&lv, logits + (size_t)r0 * V, err));
    }
    return MC_OK;
}

/* Per token, the CSA indexer's score row: the entries its sequence's block
 * table can hold (the reference pads each score row to its cache's
 * capacity, and the length decides the order among exact ties). */
static mc_status index_rows(mc_step_exec *ex, const mc_step_host_ix *hx, v4_views *s, mc_err *err) {
    int rate = ex->m->d.v4.csa_rate > 0 ? ex->m->d.v4.csa_rate : 1;
    int32_t *len = mc_arena_alloc_n(ex->arena, (size_t)hx->ns + 1, sizeof *len); /* [ns] blocks */
    int32_t *row = mc_arena_alloc_n(ex->arena, (size_t)hx->n + 1, sizeof *row);  /* [n] */
    if (!len || !row)
        return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for the V4 index rows");
    for (uint32_t i = 0; i < hx->ns; i++)
        len[i] = (int32_t)hx->nblk[i];
    for (int64_t t = 0; t < hx->n; t++)
        row[t] = (int32_t)((int64_t)len[hx->seq[t]] * ex->block_size / rate);
    return mc_tensor_upload(&s->irow, row, err);
}

mc_status mc_step_v4_forward(mc_step_exec *ex, const mc_step_host_ix *hx, float *logits,
                             mc_err *err) {
    const mc_model_desc *d = &ex->m->d;
    struct mc_step_v4 *x = ex->v4;
    int64_t n = hx->n, H = d->hidden;
    mc_backend *be = ex->be;
    v4_views s;
    mc_status st;
    if (!x) return mc_err_set(err, MC_ERR_INTERNAL, "step: DeepSeek-V4 state is not initialized");
    TRYS(views(ex, n, &s, err));
    TRYS(mc_step_table_tensor(ex, hx, &s.ix.block_table, err));
    TRYS(mc_tensor_upload(&s.tok, hx->tok, err));
    TRYS(mc_tensor_upload(&s.ix.seq, hx->seq, err));
    TRYS(mc_tensor_upload(&s.ix.pos, hx->pos, err));
    if (hx->nl > 0) {
        mc_tensor rv;
        TRYS(mc_tensor_view_rows(&x->rows, 0, hx->nl, &rv, err));
        TRYS(mc_tensor_upload(&rv, hx->rows, err));
    }
    TRYS(index_rows(ex, hx, &s, err));
    int32_t off1[2] = {0, (int32_t)n};
    TRYS(mc_tensor_upload(&x->off1, off1, err));
    /* every stream starts as the embedding */
    for (int j = 0; j < d->v4.hc_mult; j++) {
        mc_tensor xj;
        TRYS(mc_tensor_view_cols(&s.X, j * H, H, &xj, err));
        TRYS(mc_op_embed(be, &ex->embed, &s.tok, 0, &xj, err));
    }
    /* non-finite checks where the reference (tests/ref/ref_deepseek_v4.c) makes them */
    TRYS(mc_step_nf(ex, MC_NF_INPUT, 0, &s.X, hx->pos, hx->tok, err));
    for (int l = 0; l < d->n_layers; l++) {
        mc_step_v4_layer *L = &x->layers[l];
        TRYS(hc_site(ex, &s, &L->hca_fn, &L->hca_base, &L->hca_scale, &L->attn_norm, err));
        TRYS(attention(ex, l, &s, err));
        TRYS(mc_op_v4_hc_post(be, &s.X, &s.post, &s.comb, &s.y, err));
        TRYS(mc_step_nf(ex, MC_NF_ATTN, l, &s.X, hx->pos, NULL, err));
        TRYS(hc_site(ex, &s, &L->hcf_fn, &L->hcf_base, &L->hcf_scale, &L->ffn_norm, err));
        TRYS(moe(ex, l, &s, err));
        TRYS(mc_op_v4_hc_post(be, &s.X, &s.post, &s.comb, &s.y, err));
        TRYS(mc_step_nf(ex, MC_NF_FFN, l, &s.X, hx->pos, NULL, err));
    }
    return hx->nl > 0 ? head(ex, hx, &s, logits, err) : MC_OK;
}
