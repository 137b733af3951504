/* step_block.c - the step executor's math: one decoder block (GQA or MLA
 * attention over the paged cache, routed + shared experts or a dense FFN)
 * and the LM head, on the n tokens of a step, as backend ops only.
 *
 * The order of operations is worker/forward.c's, attention.c's and moe.c's,
 * so the logits agree with mc_model_forward to rounding. */
#include "step_internal.h"

static mc_status flat(const mc_tensor *t, int64_t a, int64_t b, mc_tensor *out, mc_err *err)
{
    int64_t shape[2] = {a, b};
    return mc_tensor_reshape(t, 2, shape, out, err);
}

mc_status mc_step_views_make(mc_step_exec *ex, int64_t n, mc_step_views *s, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    int64_t nh = d->n_heads, nkv = d->n_kv_heads, hd = d->head_dim;
    int64_t k = d->n_experts_per_tok > 0 ? d->n_experts_per_tok : 1;
    mc_status st;
    s->n = n;
    TRY(mc_tensor_view_rows(&ex->x, 0, n, &s->x, err));
    TRY(mc_tensor_view_rows(&ex->xn, 0, n, &s->xn, err));
    TRY(mc_tensor_view_rows(&ex->tmp, 0, n, &s->tmp, err));
    TRY(mc_tensor_view_rows(&ex->q, 0, n, &s->q, err));
    TRY(mc_tensor_view_rows(&ex->attn, 0, n, &s->attn, err));
    TRY(flat(&s->q, n, nh * s->q.shape[2], &s->q2, err));
    TRY(flat(&s->attn, n, nh * s->attn.shape[2], &s->attn2, err));
    if (d->attn == MC_ATTN_GQA) {
        TRY(mc_tensor_view_rows(&ex->k, 0, n, &s->k, err));
        TRY(mc_tensor_view_rows(&ex->v, 0, n, &s->v, err));
        TRY(flat(&s->q, n * nh, hd, &s->qh, err));
        TRY(flat(&s->k, n, nkv * hd, &s->k2, err));
        TRY(flat(&s->v, n, nkv * hd, &s->v2, err));
        TRY(flat(&s->k, n * nkv, hd, &s->kh, err));
    } else {
        int64_t lr = d->kv_lora_rank;
        TRY(mc_tensor_view_rows(&ex->qa, 0, n, &s->qa, err));
        TRY(mc_tensor_view_rows(&ex->kva, 0, n, &s->kva, err));
        TRY(mc_tensor_view_rows(&ex->lat, 0, n, &s->lat, err));
        TRY(mc_tensor_view_rows(&ex->qlat, 0, n, &s->qlat, err));
        TRY(mc_tensor_view_rows(&ex->olat, 0, n, &s->olat, err));
        TRY(flat(&s->qlat, n, nh * lr, &s->qlat2, err));
        TRY(flat(&s->olat, n, nh * lr, &s->olat2, err));
    }
    TRY(mc_tensor_view_rows(&ex->rlog, 0, n, &s->rlog, err));
    TRY(mc_tensor_view_rows(&ex->ids, 0, n, &s->ids, err));
    TRY(mc_tensor_view_rows(&ex->slot, 0, n, &s->slot, err));
    TRY(mc_tensor_view_rows(&ex->wts, 0, n, &s->wts, err));
    TRY(mc_tensor_view_rows(&ex->xp, 0, n * k, &s->xp, err));
    TRY(mc_tensor_view_rows(&ex->yp, 0, n * k, &s->yp, err));
    TRY(mc_tensor_view_rows(&ex->xp, 0, n, &s->ys, err));
    TRY(mc_tensor_view_rows(&ex->tok, 0, n, &s->tok, err));
    TRY(mc_tensor_view_rows(&ex->seq, 0, n, &s->ix.seq, err));
    TRY(mc_tensor_view_rows(&ex->pos, 0, n, &s->ix.pos, err));
fail:
    return st;
}

/* y (n, H) = down(silu(gate x) * up x), a dense or shared-expert FFN. */
static mc_status ffn(mc_step_exec *ex, const mc_step_ffn *f, const mc_tensor *x, mc_tensor *y,
                     mc_err *err)
{
    int64_t n = x->shape[0], I = f->gate.shape[0];
    mc_tensor g, u; /* (n, I) */
    mc_status st;
    TRY(mc_tensor_init_2d(&g, ex->g.buf, ex->g.offset, MC_DT_F32, n, I, err));
    TRY(mc_tensor_init_2d(&u, ex->u.buf, ex->u.offset, MC_DT_F32, n, I, err));
    TRY(mc_op_matmul(ex->be, &f->gate, x, &g, err));
    TRY(mc_op_matmul(ex->be, &f->up, x, &u, err));
    TRY(mc_op_swiglu(ex->be, &g, &u, &g, err));
    TRY(mc_op_matmul(ex->be, &f->down, &g, y, err));
fail:
    return st;
}

/* tmp = routed experts (+ shared experts) of xn. */
static mc_status moe(mc_step_exec *ex, const mc_step_layer *w, mc_step_views *s, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    mc_backend *be = ex->be;
    int sig = d->score_func == MC_SCORE_SIGMOID;
    mc_router_opts ro = {.score = sig ? MC_ROUTE_SIGMOID : MC_ROUTE_SOFTMAX,
                         .k = d->n_experts_per_tok,
                         .n_group = d->n_group,
                         .topk_group = d->topk_group,
                         .renorm = d->norm_topk_prob,
                         .norm_eps = sig ? 1e-20f : 0.0f,
                         .scale = d->routed_scale};
    mc_status st;
    TRY(mc_op_matmul(be, &w->router, &s->xn, &s->rlog, err));
    TRY(mc_op_router_topk(be, &s->rlog, w->has_bias ? &w->bias : NULL, &ro, &s->ids, &s->wts, err));
    TRY(mc_op_moe_permute(be, &s->xn, &s->ids, &s->xp, &s->slot, &ex->offsets, err));
    TRY(mc_op_grouped_experts(be, &s->xp, &ex->offsets, d->n_experts, w->gate, w->up, w->down, NULL,
                              &s->yp, err));
    TRY(mc_op_moe_unpermute_weighted(be, &s->yp, &s->slot, &s->wts, &s->tmp, err));
    if (w->has_shared) {
        TRY(ffn(ex, &w->shared, &s->xn, &s->ys, err));
        TRY(mc_op_add(be, &s->tmp, &s->ys, &s->tmp, err));
    }
fail:
    return st;
}

/* tmp = GQA attention of xn: q/k/v, per-head q/k norms, rope, write K and V
 * to the pages, attention over them, o. */
static mc_status attn_gqa(mc_step_exec *ex, mc_step_layer *w, mc_step_views *s, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    mc_backend *be = ex->be;
    int inter = d->rope.style == MC_ROPE_INTERLEAVED;
    mc_attn_opts ao = {.scale = d->attn_scale, .chunk = 0, .q_scale = NULL};
    mc_tensor qr = s->q, kr = s->k; /* the rotated dims of each head */
    mc_status st;
    TRY(mc_op_matmul(be, &w->wq, &s->xn, &s->q2, err));
    TRY(mc_op_matmul(be, &w->wk, &s->xn, &s->k2, err));
    TRY(mc_op_matmul(be, &w->wv, &s->xn, &s->v2, err));
    if (w->has_qk_norm) {
        TRY(mc_op_rmsnorm(be, &s->qh, &w->q_norm, d->norm_eps, &s->qh, err));
        TRY(mc_op_rmsnorm(be, &s->kh, &w->k_norm, d->norm_eps, &s->kh, err));
    }
    if (d->rope.dim != d->head_dim) {
        TRY(mc_tensor_view_cols(&s->q, 0, d->rope.dim, &qr, err));
        TRY(mc_tensor_view_cols(&s->k, 0, d->rope.dim, &kr, err));
    }
    TRY(mc_op_rope(be, &qr, &s->ix.pos, &ex->cs, &ex->sn, inter, err));
    TRY(mc_op_rope(be, &kr, &s->ix.pos, &ex->cs, &ex->sn, inter, err));
    TRY(mc_op_kv_write(be, &s->ix, &s->k, &w->k_pages, err));
    TRY(mc_op_kv_write(be, &s->ix, &s->v, &w->v_pages, err));
    TRY(mc_op_attention(be, &s->q, &w->k_pages, &w->v_pages, &s->ix, &ao, &s->attn, err));
    TRY(mc_op_matmul(be, &w->wo, &s->attn2, &s->tmp, err));
fail:
    return st;
}

/* tmp = MLA attention of xn in absorbed form: queries (through the q
 * LoRA), latent + rope key (normalized, rotated) to the pages, W_kb
 * absorbed into the query per head, attention over the latent cache, W_vb
 * per head, o. */
static mc_status attn_mla(mc_step_exec *ex, mc_step_layer *w, mc_step_views *s, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    mc_backend *be = ex->be;
    int64_t nh = d->n_heads, nope = d->qk_nope_dim, rd = d->qk_rope_dim, qk = nope + rd;
    int64_t lr = d->kv_lora_rank, vd = d->v_head_dim;
    int inter = d->rope.style == MC_ROPE_INTERLEAVED;
    mc_attn_opts ao = {.scale = d->attn_scale, .chunk = 0, .q_scale = NULL};
    mc_tensor kl, kpe, qpe; /* (n, lr), (n, rd) views of kva; (n, nh, rd) view of q */
    mc_status st;
    if (w->has_q_lora) {
        TRY(mc_op_matmul(be, &w->q_a, &s->xn, &s->qa, err));
        TRY(mc_op_rmsnorm(be, &s->qa, &w->q_a_norm, d->norm_eps, &s->qa, err));
        TRY(mc_op_matmul(be, &w->q_b, &s->qa, &s->q2, err));
    } else {
        TRY(mc_op_matmul(be, &w->q_proj, &s->xn, &s->q2, err));
    }
    TRY(mc_op_matmul(be, &w->kv_a, &s->xn, &s->kva, err));
    TRY(mc_tensor_view_cols(&s->kva, 0, lr, &kl, err));
    TRY(mc_tensor_view_cols(&s->kva, lr, rd, &kpe, err));
    TRY(mc_tensor_view_cols(&s->q, nope, rd, &qpe, err));
    TRY(mc_op_rmsnorm(be, &kl, &w->kv_a_norm, d->norm_eps, &s->lat, err));
    TRY(mc_op_rope(be, &kpe, &s->ix.pos, &ex->cs, &ex->sn, inter, err));
    TRY(mc_op_rope(be, &qpe, &s->ix.pos, &ex->cs, &ex->sn, inter, err));
    TRY(mc_op_kv_write(be, &s->ix, &s->lat, &w->lat_pages, err));
    TRY(mc_op_kv_write(be, &s->ix, &kpe, &w->pe_pages, err));
    for (int64_t h = 0; h < nh; h++) { /* qlat[t, h] = W_kb[h]^T q_nope[t, h] */
        mc_tensor qn, ql;              /* (n, nope), (n, lr) */
        TRY(mc_tensor_view_cols(&s->q2, h * qk, nope, &qn, err));
        TRY(mc_tensor_view_cols(&s->qlat2, h * lr, lr, &ql, err));
        TRY(mc_op_matmul(be, &w->kb[h], &qn, &ql, err));
    }
    TRY(mc_op_mla_decode(be, &s->qlat, &qpe, &w->lat_pages, &w->pe_pages, &s->ix, &ao, &s->olat,
                         err));
    for (int64_t h = 0; h < nh; h++) { /* attn[t, h] = W_vb[h] olat[t, h] */
        mc_tensor ol, av;              /* (n, lr), (n, vd) */
        TRY(mc_tensor_view_cols(&s->olat2, h * lr, lr, &ol, err));
        TRY(mc_tensor_view_cols(&s->attn2, h * vd, vd, &av, err));
        TRY(mc_op_matmul(be, &w->vb[h], &ol, &av, err));
    }
    TRY(mc_op_matmul(be, &w->wo, &s->attn2, &s->tmp, err));
fail:
    return st;
}

mc_status mc_step_block(mc_step_exec *ex, int l, mc_step_views *s, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    mc_step_layer *w = &ex->layers[l];
    mc_backend *be = ex->be;
    mc_status st;
    TRY(mc_op_rmsnorm(be, &s->x, &w->attn_norm, d->norm_eps, &s->xn, err));
    TRY(d->attn == MC_ATTN_MLA ? attn_mla(ex, w, s, err) : attn_gqa(ex, w, s, err));
    TRY(mc_op_add(be, &s->x, &s->tmp, &s->x, err));
    TRY(mc_op_rmsnorm(be, &s->x, &w->ffn_norm, d->norm_eps, &s->xn, err));
    TRY(w->moe ? moe(ex, w, s, err) : ffn(ex, &w->dense, &s->xn, &s->tmp, err));
    TRY(mc_op_add(be, &s->x, &s->tmp, &s->x, err));
fail:
    return st;
}

mc_status mc_step_head(mc_step_exec *ex, mc_step_views *s, int64_t nl, float *logits, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    int64_t R = ex->hx.shape[0];
    mc_status st = MC_OK;
    for (int64_t c0 = 0; c0 < nl; c0 += R) {
        int64_t r = nl - c0 < R ? nl - c0 : R;
        mc_tensor rows, hx, hl; /* [r] I32, (r, H), (r, V) */
        TRY(mc_tensor_view_rows(&ex->rows, c0, r, &rows, err));
        TRY(mc_tensor_view_rows(&ex->hx, 0, r, &hx, err));
        TRY(mc_tensor_view_rows(&ex->hlog, 0, r, &hl, err));
        TRY(mc_op_embed(ex->be, &s->x, &rows, 0, &hx, err)); /* gather the rows */
        TRY(mc_op_rmsnorm(ex->be, &hx, &ex->final_norm, d->norm_eps, &hx, err));
        TRY(mc_op_matmul(ex->be, &ex->lm_head, &hx, &hl, err));
        TRY(mc_tensor_download(&hl, logits + (size_t)c0 * (size_t)d->vocab, err));
    }
fail:
    return st;
}
