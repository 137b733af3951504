/* step_block.c - the step executor's math: one decoder block (GQA or MLA
 * attention over the paged cache, routed + shared experts or a dense FFN)
 * and the LM head, on the n tokens of a step, as backend ops only.
 *
 * The order of operations is worker/forward.c's, attention.c's and moe.c's,
 * so the logits agree with mc_model_forward to rounding. */
#include "step_internal.h"

mc_status mc_step_views_make(mc_step_exec *ex, int64_t n, mc_step_views *s, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    int64_t k = d->n_experts_per_tok > 0 ? d->n_experts_per_tok : 1;
    mc_status st;
    s->n = n;
    TRY(mc_tensor_view_rows(&ex->x, 0, n, &s->x, err));
    TRY(mc_tensor_view_rows(&ex->xn, 0, n, &s->xn, err));
    TRY(mc_tensor_view_rows(&ex->tmp, 0, n, &s->tmp, err));
    TRY(mc_step_views_attn(ex, n, s, err));
    TRY(mc_tensor_view_rows(&ex->rlog, 0, n, &s->rlog, err));
    TRY(mc_tensor_view_rows(&ex->ids, 0, n, &s->ids, err));
    TRY(mc_tensor_view_rows(&ex->slot, 0, n, &s->slot, err));
    TRY(mc_tensor_view_rows(&ex->wts, 0, n, &s->wts, err));
    TRY(mc_tensor_view_rows(&ex->xp, 0, n * k, &s->xp, err));
    TRY(mc_tensor_view_rows(&ex->yp, 0, n * k, &s->yp, err));
    TRY(mc_tensor_view_rows(&ex->wp, 0, n * k, &s->wp, err));
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
    int llama4 = d->router == MC_ROUTER_LLAMA4;
    mc_router_opts ro = {.score = sig ? MC_ROUTE_SIGMOID : MC_ROUTE_SOFTMAX,
                         .k = d->n_experts_per_tok,
                         .n_group = d->n_group,
                         .topk_group = d->topk_group,
                         .renorm = d->norm_topk_prob,
                         .norm_eps = sig ? 1e-20f : 0.0f,
                         .scale = d->routed_scale};
    if (llama4) /* top-k of the logits, sigmoid weights scaling the expert's input */
        ro = (mc_router_opts){.score = MC_ROUTE_LOGIT_SIGMOID, .k = d->n_experts_per_tok,
                              .scale = 1.0f};
    mc_status st;
    TRY(mc_op_matmul(be, &w->router, &s->xn, &s->rlog, err));
    TRY(mc_op_router_topk(be, &s->rlog, w->has_bias ? &w->bias : NULL, &ro, &s->ids, &s->wts, err));
    TRY(mc_op_moe_permute(be, &s->xn, &s->ids, &s->xp, &s->slot, &ex->offsets, err));
    if (llama4) {
        /* one expert per token (k = 1): the pair's weight is the token's,
         * permuted like the token's row */
        mc_experts_opts eo = {.row_weight = &s->wp, .weight_input = 1};
        TRY(mc_op_moe_permute(be, &s->wts, &s->ids, &s->wp, &s->slot, &ex->offsets, err));
        TRY(mc_op_grouped_experts(be, &s->xp, &ex->offsets, d->n_experts, w->gate, w->up,
                                  w->down, &eo, &s->yp, err));
        TRY(mc_op_moe_unpermute_weighted(be, &s->yp, &s->slot, NULL, &s->tmp, err));
    } else {
        TRY(mc_op_grouped_experts(be, &s->xp, &ex->offsets, d->n_experts, w->gate, w->up,
                                  w->down, NULL, &s->yp, err));
        TRY(mc_op_moe_unpermute_weighted(be, &s->yp, &s->slot, &s->wts, &s->tmp, err));
    }
    if (w->has_shared) {
        TRY(ffn(ex, &w->shared, &s->xn, &s->ys, err));
        TRY(mc_op_add(be, &s->tmp, &s->ys, &s->tmp, err));
    }
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
    TRY(mc_step_attention(ex, l, s, err));
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
