/* backend_ops_v4.c - the front ends of the DeepSeek-V4 ops (backend.h's
 * "DeepSeek-V4" section): argument checks naming the one at fault, then the
 * backend's entry (NULL entries: MC_ERR_UNSUPPORTED). */
#include "backend.h"
#include "backend_impl.h"
#include "backend_ops_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* A backend without the V4 entries refuses them. */
#define V4_ENTRY(entry, op)                                                                        \
    do {                                                                                           \
        if (!be->iface.entry)                                                                      \
            return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: not implemented by the %s backend",    \
                              op, be->iface.name);                                                 \
    } while (0)

/* An F32 tensor of exactly (rows, cols) as backend.h collapses it. */
static int v4_shape_ok(mc_backend *be, const mc_tensor *t, int out, int64_t rows, int64_t cols,
                       const char *what, mc_err *err) {
    if (!act_ok(be, t, out, what, err)) return 0;
    if (mc_tensor_rows(t) == rows && mc_tensor_cols(t) == cols) return 1;
    mc_err_set(err, MC_ERR_ARG, "%s: (%lld, %lld), want (%lld, %lld)", what,
               (long long)mc_tensor_rows(t), (long long)mc_tensor_cols(t), (long long)rows,
               (long long)cols);
    return 0;
}

mc_status mc_op_v4_hc_pre(mc_backend *be, const mc_tensor *x, const mc_tensor *mix,
                          const mc_tensor *base, const mc_tensor *scale, const mc_v4_hc_opts *o,
                          mc_tensor *post, mc_tensor *comb, mc_tensor *y, mc_err *err) {
    if (!o || o->hc < 1 || o->hc > 64 || o->iters < 0 || !(o->eps >= 0))
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_hc_pre: opts missing or out of range (hc 1..64, "
                          "iters >= 0, eps >= 0)");
    if ((post == NULL) != (comb == NULL))
        return mc_err_set(err, MC_ERR_ARG, "v4_hc_pre: post and comb are both given or both NULL");
    if (!act_ok(be, x, 0, "v4_hc_pre: x", err) || !act_ok(be, y, 1, "v4_hc_pre: y", err))
        return FAIL_ARG();
    int64_t n = mc_tensor_rows(x), hc = o->hc, H = mc_tensor_cols(y),
            mw = post ? (2 + hc) * hc : hc;
    if (mc_tensor_cols(x) != hc * H || mc_tensor_rows(y) != n)
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_hc_pre: x (%lld, %lld) is not (n, hc * cols(y)) = "
                          "(%lld, %lld)",
                          (long long)n, (long long)mc_tensor_cols(x), (long long)mc_tensor_rows(y),
                          (long long)(hc * H));
    if (!v4_shape_ok(be, mix, 0, n, mw, "v4_hc_pre: mix", err) ||
        !vec_ok(be, base, mw, "v4_hc_pre: base", err) ||
        !vec_ok(be, scale, post ? 3 : 1, "v4_hc_pre: scale", err))
        return FAIL_ARG();
    if (post && (!v4_shape_ok(be, post, 1, n, hc, "v4_hc_pre: post", err) ||
                 !v4_shape_ok(be, comb, 1, n, hc * hc, "v4_hc_pre: comb", err)))
        return FAIL_ARG();
    const mc_tensor *in[4] = {x, mix, base, scale};
    mc_tensor *out[3] = {y, post, comb};
    for (int i = 0; i < 3; i++)
        for (int j = 0; out[i] && j < 4 + i; j++) {
            const mc_tensor *other = j < 4 ? in[j] : out[j - 4];
            if (other && !alias_ok(out[i], other, 0, "v4_hc_pre: output", err)) return FAIL_ARG();
        }
    V4_ENTRY(v4_hc_pre, "v4_hc_pre");
    return be->iface.v4_hc_pre(be->ctx, x, mix, base, scale, o, post, comb, y, err);
}

mc_status mc_op_v4_hc_post(mc_backend *be, mc_tensor *x, const mc_tensor *post,
                           const mc_tensor *comb, const mc_tensor *y, mc_err *err) {
    if (!act_ok(be, x, 1, "v4_hc_post: x", err) || !act_ok(be, post, 0, "v4_hc_post: post", err) ||
        !act_ok(be, y, 0, "v4_hc_post: y", err))
        return FAIL_ARG();
    int64_t n = mc_tensor_rows(x), hc = mc_tensor_cols(post), H = mc_tensor_cols(y);
    if (mc_tensor_rows(post) != n || mc_tensor_rows(y) != n || mc_tensor_cols(x) != hc * H)
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_hc_post: x (%lld, %lld), post (%lld, %lld), y "
                          "(%lld, %lld): want (n, hc * H), (n, hc), (n, H)",
                          (long long)n, (long long)mc_tensor_cols(x),
                          (long long)mc_tensor_rows(post), (long long)hc,
                          (long long)mc_tensor_rows(y), (long long)H);
    if (!v4_shape_ok(be, comb, 0, n, hc * hc, "v4_hc_post: comb", err) ||
        !alias_ok(x, post, 0, "v4_hc_post: x", err) ||
        !alias_ok(x, comb, 0, "v4_hc_post: x", err) || !alias_ok(x, y, 0, "v4_hc_post: x", err))
        return FAIL_ARG();
    V4_ENTRY(v4_hc_post, "v4_hc_post");
    return be->iface.v4_hc_post(be->ctx, x, post, comb, y, err);
}

mc_status mc_op_v4_compress(mc_backend *be, const mc_tensor *kv_pages, const mc_tensor *gate_pages,
                            const mc_tensor *ape, const mc_tensor *norm, const mc_tensor *cs,
                            const mc_tensor *sn, const mc_kv_index *ix, const mc_v4_comp_opts *o,
                            mc_tensor *out_pages, mc_err *err) {
    if (!o || o->rate < 1 || (o->overlap != 0 && o->overlap != 1) || !(o->eps >= 0))
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_compress: opts missing or out of range (rate >= 1, "
                          "overlap 0 or 1, eps >= 0)");
    if (!pages_ok(be, kv_pages, 3, 0, "v4_compress: kv_pages", err) ||
        !pages_ok(be, gate_pages, 3, 0, "v4_compress: gate_pages", err) ||
        !pages_ok(be, out_pages, 3, 1, "v4_compress: out_pages", err) ||
        !same_pages(kv_pages, gate_pages, "v4_compress: gate_pages", err) ||
        !same_pages(kv_pages, out_pages, "v4_compress: out_pages", err))
        return FAIL_ARG();
    int64_t cd = out_pages->shape[2], W = (1 + o->overlap) * cd;
    if (kv_pages->shape[2] != W || gate_pages->shape[2] != W)
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_compress: kv_pages / gate_pages rows of %lld / "
                          "%lld, want (1 + overlap) * %lld = %lld",
                          (long long)kv_pages->shape[2], (long long)gate_pages->shape[2],
                          (long long)cd, (long long)W);
    if (!v4_shape_ok(be, ape, 0, o->rate, W, "v4_compress: ape", err) ||
        !vec_ok(be, norm, cd, "v4_compress: norm", err) ||
        !act_ok(be, cs, 0, "v4_compress: cs", err) ||
        !same_rows_cols(cs, sn, "v4_compress: sn", err) ||
        !act_ok(be, sn, 0, "v4_compress: sn", err))
        return FAIL_ARG();
    if (2 * mc_tensor_cols(cs) > cd || cs->ndim != 2)
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_compress: cs has %lld columns: 2x that is more "
                          "than the entry's %lld",
                          (long long)mc_tensor_cols(cs), (long long)cd);
    if (!index_ok(be, ix, ix ? ix->pos.shape[0] : 0, "v4_compress", err)) return FAIL_ARG();
    const mc_tensor *in[6] = {kv_pages, gate_pages, ape, norm, cs, sn};
    for (int i = 0; i < 6; i++)
        if (!alias_ok(out_pages, in[i], 0, "v4_compress: out_pages", err)) return FAIL_ARG();
    if (!index_alias_ok(out_pages, ix, "v4_compress: out_pages", err)) return FAIL_ARG();
    V4_ENTRY(v4_compress, "v4_compress");
    return be->iface.v4_compress(be->ctx, kv_pages, gate_pages, ape, norm, cs, sn, ix, o, out_pages,
                                 err);
}

mc_status mc_op_v4_index_topk(mc_backend *be, const mc_tensor *iq, const mc_tensor *w,
                              const mc_tensor *key_pages, const mc_kv_index *ix,
                              const mc_v4_index_opts *o, mc_tensor *sel, mc_err *err) {
    if (!o || o->rate < 1 || o->k < 1 || !isfinite(o->score_scale) || !isfinite(o->weight_scale))
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_index_topk: opts missing or out of range (rate, k "
                          ">= 1, finite scales)");
    if (!act_ok(be, iq, 0, "v4_index_topk: iq", err) ||
        !act_ok(be, w, 0, "v4_index_topk: w", err) ||
        !pages_ok(be, key_pages, 3, 0, "v4_index_topk: key_pages", err))
        return FAIL_ARG();
    if (iq->ndim != 3 || iq->shape[2] != key_pages->shape[2])
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_index_topk: iq has %d dimensions, last %lld (want "
                          "(n, ih, %lld))",
                          iq->ndim, (long long)mc_tensor_cols(iq), (long long)key_pages->shape[2]);
    int64_t n = iq->shape[0], ih = iq->shape[1];
    if (mc_tensor_rows(w) != n || mc_tensor_cols(w) != ih)
        return mc_err_set(err, MC_ERR_ARG, "v4_index_topk: w is not (%lld, %lld)", (long long)n,
                          (long long)ih);
    if (!i32_ok(be, sel, 1, n, o->k, "v4_index_topk: sel", err) ||
        (o->n_row && !i32_ok(be, o->n_row, 0, 1, n, "v4_index_topk: opts.n_row", err)) ||
        !index_ok(be, ix, n, "v4_index_topk", err) ||
        !alias_ok(sel, iq, 0, "v4_index_topk: sel", err) ||
        !alias_ok(sel, w, 0, "v4_index_topk: sel", err) ||
        !alias_ok(sel, key_pages, 0, "v4_index_topk: sel", err) ||
        !index_alias_ok(sel, ix, "v4_index_topk: sel", err))
        return FAIL_ARG();
    if (o->n_row && o->n_row->ndim != 1)
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_index_topk: opts.n_row has %d dimensions (want "
                          "I32 [n])",
                          o->n_row->ndim);
    V4_ENTRY(v4_index_topk, "v4_index_topk");
    return be->iface.v4_index_topk(be->ctx, iq, w, key_pages, ix, o, sel, err);
}

mc_status mc_op_v4_attention(mc_backend *be, const mc_tensor *q, const mc_tensor *kv_pages,
                             const mc_tensor *comp_pages, const mc_tensor *sinks,
                             const mc_tensor *sel, const mc_kv_index *ix, const mc_v4_attn_opts *o,
                             mc_tensor *y, mc_err *err) {
    if (!o || o->window < 1 || (comp_pages && o->rate < 1) || !isfinite(o->scale))
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_attention: opts missing or out of range (window "
                          ">= 1, rate >= 1 with comp_pages, finite scale)");
    if (sel && !comp_pages)
        return mc_err_set(err, MC_ERR_ARG, "v4_attention: sel without comp_pages");
    if (!act_ok(be, q, 0, "v4_attention: q", err) || !act_ok(be, y, 1, "v4_attention: y", err) ||
        !pages_ok(be, kv_pages, 3, 0, "v4_attention: kv_pages", err))
        return FAIL_ARG();
    if (q->ndim != 3 || q->shape[2] != kv_pages->shape[2])
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_attention: q has %d dimensions, last %lld (want "
                          "(n, nh, %lld))",
                          q->ndim, (long long)mc_tensor_cols(q), (long long)kv_pages->shape[2]);
    int64_t n = q->shape[0], nh = q->shape[1];
    if (!same_rows_cols(q, y, "v4_attention: y", err) ||
        !vec_ok(be, sinks, nh, "v4_attention: sinks", err))
        return FAIL_ARG();
    if (comp_pages && (!pages_ok(be, comp_pages, 3, 0, "v4_attention: comp_pages", err) ||
                       !same_pages(kv_pages, comp_pages, "v4_attention: comp_pages", err)))
        return FAIL_ARG();
    if (comp_pages && comp_pages->shape[2] != kv_pages->shape[2])
        return mc_err_set(err, MC_ERR_ARG, "v4_attention: comp_pages rows of %lld, want %lld",
                          (long long)comp_pages->shape[2], (long long)kv_pages->shape[2]);
    if (sel && !sel_ok(be, sel, n, y, "v4_attention: sel", err)) return FAIL_ARG();
    if (!index_ok(be, ix, n, "v4_attention", err) || !alias_ok(y, q, 0, "v4_attention: y", err) ||
        !alias_ok(y, kv_pages, 0, "v4_attention: y", err) ||
        (comp_pages && !alias_ok(y, comp_pages, 0, "v4_attention: y", err)) ||
        !alias_ok(y, sinks, 0, "v4_attention: y", err) ||
        !index_alias_ok(y, ix, "v4_attention: y", err))
        return FAIL_ARG();
    V4_ENTRY(v4_attention, "v4_attention");
    return be->iface.v4_attention(be->ctx, q, kv_pages, comp_pages, sinks, sel, ix, o, y, err);
}

mc_status mc_op_v4_hash_route(mc_backend *be, const mc_tensor *logits, const mc_tensor *tok,
                              const mc_tensor *table, const mc_router_opts *opts, mc_tensor *ids,
                              mc_tensor *weights, mc_err *err) {
    if (!opts || opts->k < 1 ||
        (opts->score != MC_ROUTE_SQRTSOFTPLUS && opts->score != MC_ROUTE_SIGMOID) ||
        !isfinite(opts->scale) || !(opts->norm_eps >= 0))
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_hash_route: opts missing or out of range (k >= 1, "
                          "score SQRTSOFTPLUS or SIGMOID, finite scale, norm_eps >= 0)");
    if (!act_ok(be, logits, 0, "v4_hash_route: logits", err)) return FAIL_ARG();
    int64_t n = mc_tensor_rows(logits);
    if (tok->ndim != 1 || !i32_ok(be, tok, 0, 1, n, "v4_hash_route: tok", err) ||
        !i32_ok(be, table, 0, mc_tensor_rows(table), opts->k, "v4_hash_route: table", err) ||
        !i32_ok(be, ids, 1, n, opts->k, "v4_hash_route: ids", err) ||
        !v4_shape_ok(be, weights, 1, n, opts->k, "v4_hash_route: weights", err))
        return FAIL_ARG();
    const mc_tensor *in[3] = {logits, tok, table};
    for (int i = 0; i < 3; i++)
        if (!alias_ok(ids, in[i], 0, "v4_hash_route: ids", err) ||
            !alias_ok(weights, in[i], 0, "v4_hash_route: weights", err))
            return FAIL_ARG();
    if (!alias_ok(weights, ids, 0, "v4_hash_route: weights", err)) return FAIL_ARG();
    V4_ENTRY(v4_hash_route, "v4_hash_route");
    return be->iface.v4_hash_route(be->ctx, logits, tok, table, opts, ids, weights, err);
}
