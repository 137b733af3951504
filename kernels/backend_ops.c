/* backend_ops.c - the ops of backend.h: each checks its arguments (shapes,
 * dtypes, ranges, backend membership, writability, aliasing) and names the
 * one at fault with MC_ERR_ARG before dispatching to the backend's vtable. */
#include "backend.h"
#include "backend_impl.h"
#include "backend_ops_internal.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mc_status mc_op_matmul(mc_backend *be, const mc_tensor *w, const mc_tensor *x, mc_tensor *y,
                       mc_err *err)
{
    if (!arg_ok(be, w, "matmul: w", err) || !act_ok(be, x, 0, "matmul: x", err) ||
        !act_ok(be, y, 1, "matmul: y", err))
        return FAIL_ARG();
    if (w->ndim != 2 || !mc_backend_is_weight_dtype(w->dtype))
        return mc_err_set(err, MC_ERR_ARG, "matmul: w is %s with %d dimensions (want a 2-D weight "
                          "in F32, F16, BF16, F8_E4M3, Q8_0, Q4_K, Q5_K or Q6_K)", mc_dtype_name(w->dtype),
                          w->ndim);
    if (mc_tensor_cols(x) != w->shape[1])
        return mc_err_set(err, MC_ERR_ARG, "matmul: x has %lld columns, w has %lld inputs",
                          (long long)mc_tensor_cols(x), (long long)w->shape[1]);
    if (mc_tensor_rows(x) > INT_MAX || mc_tensor_rows(y) != mc_tensor_rows(x) ||
        mc_tensor_cols(y) != w->shape[0])
        return mc_err_set(err, MC_ERR_ARG, "matmul: y is (%lld, %lld), want (%lld, %lld)",
                          (long long)mc_tensor_rows(y), (long long)mc_tensor_cols(y),
                          (long long)mc_tensor_rows(x), (long long)w->shape[0]);
    if (!alias_ok(y, x, 0, "matmul: y", err) || !alias_ok(y, w, 0, "matmul: y", err))
        return FAIL_ARG();
    if (be->rec)
        return mc_rec_matmul(be, w, x, y, err);
    return be->iface.matmul(be->ctx, w, x, y, err);
}

mc_status mc_op_rmsnorm(mc_backend *be, const mc_tensor *x, const mc_tensor *w, float eps,
                        mc_tensor *y, mc_err *err)
{
    if (!act_ok(be, x, 0, "rmsnorm: x", err) || !act_ok(be, y, 1, "rmsnorm: y", err) ||
        !same_rows_cols(x, y, "rmsnorm: y", err) || !alias_ok(y, x, 1, "rmsnorm: y", err))
        return FAIL_ARG();
    if (w) {
        if (!act_ok(be, w, 0, "rmsnorm: w", err))
            return FAIL_ARG();
        if (mc_tensor_rows(w) != 1 || mc_tensor_cols(w) != mc_tensor_cols(x))
            return mc_err_set(err, MC_ERR_ARG, "rmsnorm: w has %lld elements, x rows have %lld",
                              (long long)mc_tensor_nelems(w), (long long)mc_tensor_cols(x));
        if (!alias_ok(y, w, 0, "rmsnorm: y", err))
            return FAIL_ARG();
    }
    if (!(eps >= 0))
        return mc_err_set(err, MC_ERR_ARG, "rmsnorm: eps = %g", (double)eps);
    if (be->rec)
        return mc_rec_rmsnorm(be, x, w, eps, y, err);
    return be->iface.rmsnorm(be->ctx, x, w, eps, y, err);
}

mc_status mc_op_rope(mc_backend *be, mc_tensor *x, const mc_tensor *pos, const mc_tensor *cs,
                     const mc_tensor *sn, int interleaved, mc_err *err)
{
    if (!act_ok(be, x, 1, "rope: x", err) || !arg_ok(be, pos, "rope: pos", err) ||
        !act_ok(be, cs, 0, "rope: cs", err) || !act_ok(be, sn, 0, "rope: sn", err))
        return FAIL_ARG();
    if (x->ndim != 2 && x->ndim != 3)
        return mc_err_set(err, MC_ERR_ARG, "rope: x has %d dimensions (want (n, d) or "
                          "(n, heads, d))", x->ndim);
    int64_t d = mc_tensor_cols(x);
    if (d % 2 != 0)
        return mc_err_set(err, MC_ERR_ARG, "rope: x has an odd number of columns (%lld)",
                          (long long)d);
    if (pos->dtype != MC_DT_I32 || pos->ndim != 1 || pos->shape[0] != x->shape[0])
        return mc_err_set(err, MC_ERR_ARG, "rope: pos is %s with %d dimensions of which the "
                          "first is %lld (want I32 [%lld], one position per token)",
                          mc_dtype_name(pos->dtype), pos->ndim, (long long)pos->shape[0],
                          (long long)x->shape[0]);
    if (cs->ndim != 2 || mc_tensor_cols(cs) != d / 2 || !same_rows_cols(cs, sn, "rope: sn", err))
        return err && err->status != MC_OK
                   ? err->status
                   : mc_err_set(err, MC_ERR_ARG, "rope: cs is (%lld, %lld) with %d dimensions "
                                "(want (positions, %lld))", (long long)mc_tensor_rows(cs),
                                (long long)mc_tensor_cols(cs), cs->ndim, (long long)(d / 2));
    if (!alias_ok(x, pos, 0, "rope: x", err) || !alias_ok(x, cs, 0, "rope: x", err) ||
        !alias_ok(x, sn, 0, "rope: x", err))
        return FAIL_ARG();
    if (be->rec)
        return mc_rec_rope(be, x, pos, cs, sn, interleaved, err);
    return be->iface.rope(be->ctx, x, pos, cs, sn, interleaved, err);
}

mc_status mc_op_swiglu(mc_backend *be, const mc_tensor *g, const mc_tensor *u, mc_tensor *y,
                       mc_err *err)
{
    if (!act_ok(be, g, 0, "swiglu: g", err) || !act_ok(be, u, 0, "swiglu: u", err) ||
        !act_ok(be, y, 1, "swiglu: y", err) || !same_rows_cols(g, u, "swiglu: u", err) ||
        !same_rows_cols(g, y, "swiglu: y", err) || !alias_ok(y, g, 1, "swiglu: y", err) ||
        !alias_ok(y, u, 1, "swiglu: y", err))
        return FAIL_ARG();
    if (be->rec)
        return mc_rec_binary(be, 0, g, u, y, err);
    return be->iface.swiglu(be->ctx, g, u, y, err);
}

mc_status mc_op_add(mc_backend *be, const mc_tensor *a, const mc_tensor *b, mc_tensor *y,
                    mc_err *err)
{
    if (!act_ok(be, a, 0, "add: a", err) || !act_ok(be, b, 0, "add: b", err) ||
        !act_ok(be, y, 1, "add: y", err) || !same_rows_cols(a, b, "add: b", err) ||
        !same_rows_cols(a, y, "add: y", err) || !alias_ok(y, a, 1, "add: y", err) ||
        !alias_ok(y, b, 1, "add: y", err))
        return FAIL_ARG();
    if (be->rec)
        return mc_rec_binary(be, 1, a, b, y, err);
    return be->iface.add(be->ctx, a, b, y, err);
}

mc_status mc_op_softmax(mc_backend *be, const mc_tensor *x, mc_tensor *y, mc_err *err)
{
    if (!act_ok(be, x, 0, "softmax: x", err) || !act_ok(be, y, 1, "softmax: y", err) ||
        !same_rows_cols(x, y, "softmax: y", err) || !alias_ok(y, x, 1, "softmax: y", err))
        return FAIL_ARG();
    if (be->rec)
        return mc_rec_softmax(be, x, y, err);
    return be->iface.softmax(be->ctx, x, y, err);
}

mc_status mc_op_find_nonfinite(mc_backend *be, const mc_tensor *x, int64_t *row, int64_t *col,
                               mc_err *err)
{
    if (!act_ok(be, x, 0, "find_nonfinite: x", err))
        return FAIL_ARG();
    if (!row || !col)
        return mc_err_set(err, MC_ERR_ARG, "find_nonfinite: row and col must not be NULL");
    *row = *col = -1;
    if (be->capturing)
        return mc_graph_refuse(be, "find_nonfinite", err);
    return be->iface.find_nonfinite(be->ctx, x, row, col, err);
}

mc_status mc_op_note_nonfinite(mc_backend *be, const mc_tensor *x, int64_t tag, mc_err *err)
{
    if (!act_ok(be, x, 0, "note_nonfinite: x", err))
        return FAIL_ARG();
    if (tag < 0)
        return mc_err_set(err, MC_ERR_ARG, "note_nonfinite: tag %lld is negative", (long long)tag);
    if (be->rec)
        return mc_rec_note_nonfinite(be, x, tag, err);
    return be->iface.note_nonfinite(be->ctx, x, tag, err);
}

mc_status mc_op_topk(mc_backend *be, const mc_tensor *x, int k, int64_t id0, mc_tensor *ids,
                     mc_tensor *vals, mc_tensor *lse, mc_err *err)
{
    if (!act_ok(be, x, 0, "topk: x", err) || !arg_ok(be, ids, "topk: ids", err) ||
        !act_ok(be, vals, 1, "topk: vals", err) || (lse && !act_ok(be, lse, 1, "topk: lse", err)))
        return FAIL_ARG();
    int64_t r = mc_tensor_rows(x), V = mc_tensor_cols(x);
    if (k < 1 || k > MC_TOPK_MAX || k > V)
        return mc_err_set(err, MC_ERR_ARG, "topk: k = %d is not in 1..%d and at most the %lld "
                          "columns", k, MC_TOPK_MAX, (long long)V);
    if (id0 < 0 || id0 + V - 1 > INT32_MAX)
        return mc_err_set(err, MC_ERR_ARG, "topk: ids %lld..%lld do not fit I32", (long long)id0,
                          (long long)(id0 + V - 1));
    if (ids->dtype != MC_DT_I32 || ids->transposed || ids->buf->borrowed)
        return mc_err_set(err, MC_ERR_ARG, "topk: ids is %s%s (want a writable I32 (r, k))",
                          mc_dtype_name(ids->dtype), ids->transposed ? ", transposed" : "");
    if (mc_tensor_rows(ids) != r || mc_tensor_cols(ids) != k || mc_tensor_rows(vals) != r ||
        mc_tensor_cols(vals) != k || (lse && (mc_tensor_rows(lse) != r || mc_tensor_cols(lse) != 2)))
        return mc_err_set(err, MC_ERR_ARG, "topk: ids, vals (and lse) must be (%lld, %d) (and "
                          "(%lld, 2))", (long long)r, k, (long long)r);
    if (!alias_ok(ids, x, 0, "topk: ids", err) || !alias_ok(vals, x, 0, "topk: vals", err) ||
        !alias_ok(vals, ids, 0, "topk: vals", err) ||
        (lse && (!alias_ok(lse, x, 0, "topk: lse", err) || !alias_ok(lse, ids, 0, "topk: lse", err) ||
                 !alias_ok(lse, vals, 0, "topk: lse", err))))
        return FAIL_ARG();
    if (!be->iface.topk)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "topk: the %s backend has no top-k",
                          be->iface.name);
    if (r == 0)
        return MC_OK;
    if (be->rec)
        return mc_rec_topk(be, x, k, id0, ids, vals, lse, err);
    return be->iface.topk(be->ctx, x, k, id0, ids, vals, lse, err);
}

mc_status mc_op_embed(mc_backend *be, const mc_tensor *table, const mc_tensor *ids, int64_t id0,
                      mc_tensor *y, mc_err *err)
{
    if (!arg_ok(be, table, "embed: table", err) || !arg_ok(be, ids, "embed: ids", err) ||
        !act_ok(be, y, 1, "embed: y", err))
        return FAIL_ARG();
    if (table->ndim != 2 || table->transposed || !mc_backend_is_weight_dtype(table->dtype))
        return mc_err_set(err, MC_ERR_ARG, "embed: table is %s with %d dimensions%s (want a 2-D "
                          "weight, not transposed)", mc_dtype_name(table->dtype), table->ndim,
                          table->transposed ? ", transposed" : "");
    if (table->pack != 0)
        return mc_err_set(err, MC_ERR_ARG, "embed: table rows are repacked for products (layout "
                          "%d); an embedding table is read as stored", table->pack);
    if ((ids->dtype != MC_DT_I32 && ids->dtype != MC_DT_I64) || ids->ndim != 1)
        return mc_err_set(err, MC_ERR_ARG, "embed: ids is %s with %d dimensions (want I32 or I64 "
                          "[n])", mc_dtype_name(ids->dtype), ids->ndim);
    if (mc_tensor_rows(y) != ids->shape[0] || mc_tensor_cols(y) != table->shape[1])
        return mc_err_set(err, MC_ERR_ARG, "embed: y is (%lld, %lld), want (%lld, %lld)",
                          (long long)mc_tensor_rows(y), (long long)mc_tensor_cols(y),
                          (long long)ids->shape[0], (long long)table->shape[1]);
    if (!alias_ok(y, table, 0, "embed: y", err) || !alias_ok(y, ids, 0, "embed: y", err))
        return FAIL_ARG();
    if (be->rec)
        return mc_rec_embed(be, table, ids, id0, y, err);
    return be->iface.embed(be->ctx, table, ids, id0, y, err);
}

/* ---- paged KV cache and attention ---- */

mc_status mc_op_kv_write(mc_backend *be, const mc_kv_index *ix, const mc_tensor *src,
                         mc_tensor *pages, mc_err *err)
{
    if (!act_ok(be, src, 0, "kv_write: src", err) ||
        !kv_pages_ok(be, pages, 0, 1, "kv_write: pages", err))
        return FAIL_ARG();
    if (src->ndim < 2)
        return mc_err_set(err, MC_ERR_ARG, "kv_write: src has 1 dimension (want (n, ..., W))");
    int64_t n = src->shape[0];
    if (!index_ok(be, ix, n, "kv_write", err))
        return FAIL_ARG();
    int64_t slot_rows = mc_tensor_rows(pages) / (pages->shape[0] * pages->shape[1]);
    if (mc_tensor_cols(src) != mc_tensor_cols(pages) || mc_tensor_rows(src) / n != slot_rows)
        return mc_err_set(err, MC_ERR_ARG, "kv_write: src has %lld x %lld elements per token, a "
                          "slot of pages holds %lld x %lld", (long long)(mc_tensor_rows(src) / n),
                          (long long)mc_tensor_cols(src), (long long)slot_rows,
                          (long long)mc_tensor_cols(pages));
    if (!alias_ok(pages, src, 0, "kv_write: pages", err) ||
        !index_alias_ok(pages, ix, "kv_write: pages", err))
        return FAIL_ARG();
    if (be->rec)
        return mc_rec_kv_write(be, ix, src, pages, err);
    return be->iface.kv_write(be->ctx, ix, src, pages, err);
}

mc_status mc_op_attention(mc_backend *be, const mc_tensor *q, const mc_tensor *k_pages,
                          const mc_tensor *v_pages, const mc_kv_index *ix,
                          const mc_attn_opts *opt, mc_tensor *y, mc_err *err)
{
    if (!act_ok(be, q, 0, "attention: q", err) ||
        !kv_pages_ok(be, k_pages, 4, 0, "attention: k_pages", err) ||
        !kv_pages_ok(be, v_pages, 4, 0, "attention: v_pages", err) ||
        !act_ok(be, y, 1, "attention: y", err) ||
        !same_pages(k_pages, v_pages, "attention: v_pages", err))
        return FAIL_ARG();
    if (q->ndim != 3 || q->shape[2] != k_pages->shape[3])
        return mc_err_set(err, MC_ERR_ARG, "attention: q has %d dimensions, last %lld (want "
                          "(n, nh, %lld))", q->ndim, (long long)mc_tensor_cols(q),
                          (long long)k_pages->shape[3]);
    int64_t n = q->shape[0], nh = q->shape[1], nkv = k_pages->shape[2];
    if (v_pages->shape[2] != nkv || nh % nkv != 0)
        return mc_err_set(err, MC_ERR_ARG, "attention: %lld query heads over k_pages' %lld and "
                          "v_pages' %lld KV heads (want equal KV heads dividing the query "
                          "heads)", (long long)nh, (long long)nkv, (long long)v_pages->shape[2]);
    if (y->ndim != 3 || y->shape[0] != n || y->shape[1] != nh || y->shape[2] != v_pages->shape[3])
        return mc_err_set(err, MC_ERR_ARG, "attention: y is not (%lld, %lld, %lld)", (long long)n,
                          (long long)nh, (long long)v_pages->shape[3]);
    if (!index_ok(be, ix, n, "attention", err) || !opts_ok(be, opt, n, "attention", err))
        return FAIL_ARG();
    if (opt->sel)
        return mc_err_set(err, MC_ERR_ARG, "attention: opt.sel is supported by mla_decode only");
    if (!alias_ok(y, q, 0, "attention: y", err) || !alias_ok(y, k_pages, 0, "attention: y", err) ||
        !alias_ok(y, v_pages, 0, "attention: y", err) ||
        !index_alias_ok(y, ix, "attention: y", err) ||
        (opt->q_scale && !alias_ok(y, opt->q_scale, 0, "attention: y", err)))
        return FAIL_ARG();
    if (be->rec)
        return mc_rec_attention(be, q, k_pages, v_pages, ix, opt, y, err);
    return be->iface.attention(be->ctx, q, k_pages, v_pages, ix, opt, y, err);
}

mc_status mc_op_mla_decode(mc_backend *be, const mc_tensor *q_lat, const mc_tensor *q_pe,
                           const mc_tensor *lat_pages, const mc_tensor *pe_pages,
                           const mc_kv_index *ix, const mc_attn_opts *opt, mc_tensor *y,
                           mc_err *err)
{
    if (!act_ok(be, q_lat, 0, "mla_decode: q_lat", err) ||
        !act_ok(be, q_pe, 0, "mla_decode: q_pe", err) ||
        !kv_pages_ok(be, lat_pages, 3, 0, "mla_decode: lat_pages", err) ||
        !kv_pages_ok(be, pe_pages, 3, 0, "mla_decode: pe_pages", err) ||
        !act_ok(be, y, 1, "mla_decode: y", err) ||
        !same_pages(lat_pages, pe_pages, "mla_decode: pe_pages", err))
        return FAIL_ARG();
    int64_t lr = lat_pages->shape[2], rd = pe_pages->shape[2];
    if (q_lat->ndim != 3 || q_lat->shape[2] != lr)
        return mc_err_set(err, MC_ERR_ARG, "mla_decode: q_lat has %d dimensions, last %lld (want "
                          "(n, nh, %lld))", q_lat->ndim, (long long)mc_tensor_cols(q_lat),
                          (long long)lr);
    int64_t n = q_lat->shape[0], nh = q_lat->shape[1];
    if (q_pe->ndim != 3 || q_pe->shape[0] != n || q_pe->shape[1] != nh || q_pe->shape[2] != rd)
        return mc_err_set(err, MC_ERR_ARG, "mla_decode: q_pe is not (%lld, %lld, %lld)",
                          (long long)n, (long long)nh, (long long)rd);
    if (y->ndim != 3 || y->shape[0] != n || y->shape[1] != nh || y->shape[2] != lr)
        return mc_err_set(err, MC_ERR_ARG, "mla_decode: y is not (%lld, %lld, %lld)",
                          (long long)n, (long long)nh, (long long)lr);
    if (!index_ok(be, ix, n, "mla_decode", err) || !opts_ok(be, opt, n, "mla_decode", err) ||
        (opt->sel && !sel_ok(be, opt->sel, n, y, "mla_decode: opt.sel", err)))
        return FAIL_ARG();
    if (!alias_ok(y, q_lat, 0, "mla_decode: y", err) ||
        !alias_ok(y, q_pe, 0, "mla_decode: y", err) ||
        !alias_ok(y, lat_pages, 0, "mla_decode: y", err) ||
        !alias_ok(y, pe_pages, 0, "mla_decode: y", err) ||
        !index_alias_ok(y, ix, "mla_decode: y", err) ||
        (opt->q_scale && !alias_ok(y, opt->q_scale, 0, "mla_decode: y", err)))
        return FAIL_ARG();
    if (be->rec)
        return mc_rec_mla_decode(be, q_lat, q_pe, lat_pages, pe_pages, ix, opt, y, err);
    return be->iface.mla_decode(be->ctx, q_lat, q_pe, lat_pages, pe_pages, ix, opt, y, err);
}

/* ---- MoE block and LayerNorm ---- */

mc_status mc_op_router_topk(mc_backend *be, const mc_tensor *logits, const mc_tensor *bias,
                            const mc_router_opts *opts, mc_tensor *ids, mc_tensor *weights,
                            mc_err *err)
{
    if (!opts)
        return mc_err_set(err, MC_ERR_ARG, "router_topk: opts is NULL");
    if (!act_ok(be, logits, 0, "router_topk: logits", err))
        return FAIL_ARG();
    int64_t n = mc_tensor_rows(logits), E = mc_tensor_cols(logits), k = opts->k;
    if ((int)opts->score < 0 || opts->score >= MC_ROUTE_COUNT)
        return mc_err_set(err, MC_ERR_ARG, "router_topk: opts.score = %d", (int)opts->score);
    if (k < 1 || k > E)
        return mc_err_set(err, MC_ERR_ARG, "router_topk: opts.k = %lld is outside [1, %lld]",
                          (long long)k, (long long)E);
    if (opts->n_group > 1 && opts->topk_group < opts->n_group) {
        int64_t G = opts->n_group, per = E / G;
        if (E % G != 0 || per < 2)
            return mc_err_set(err, MC_ERR_ARG, "router_topk: opts.n_group = %lld does not split "
                              "%lld experts into groups of at least 2", (long long)G,
                              (long long)E);
        if (opts->topk_group < 1 || k > opts->topk_group * per)
            return mc_err_set(err, MC_ERR_ARG, "router_topk: opts.topk_group = %d groups of %lld "
                              "cannot hold k = %lld experts", opts->topk_group, (long long)per,
                              (long long)k);
    }
    if (!(opts->norm_eps >= 0 && opts->norm_eps < INFINITY) ||
        !(opts->scale > -INFINITY && opts->scale < INFINITY))
        return mc_err_set(err, MC_ERR_ARG, "router_topk: opts.norm_eps = %g or opts.scale = %g "
                          "is not finite (norm_eps >= 0)", (double)opts->norm_eps,
                          (double)opts->scale);
    if ((bias && !vec_ok(be, bias, E, "router_topk: bias", err)) ||
        !i32_ok(be, ids, 1, n, k, "router_topk: ids", err) ||
        !act_ok(be, weights, 1, "router_topk: weights", err))
        return FAIL_ARG();
    if (mc_tensor_rows(weights) != n || mc_tensor_cols(weights) != k)
        return mc_err_set(err, MC_ERR_ARG, "router_topk: weights is (%lld, %lld), want (%lld, "
                          "%lld)", (long long)mc_tensor_rows(weights),
                          (long long)mc_tensor_cols(weights), (long long)n, (long long)k);
    if (!alias_ok(ids, logits, 0, "router_topk: ids", err) ||
        !alias_ok(weights, logits, 0, "router_topk: weights", err) ||
        !alias_ok(weights, ids, 0, "router_topk: weights", err) ||
        (bias && (!alias_ok(ids, bias, 0, "router_topk: ids", err) ||
                  !alias_ok(weights, bias, 0, "router_topk: weights", err))))
        return FAIL_ARG();
    if (be->rec)
        return mc_rec_router_topk(be, logits, bias, opts, ids, weights, err);
    return be->iface.router_topk(be->ctx, logits, bias, opts, ids, weights, err);
}

mc_status mc_op_moe_permute(mc_backend *be, const mc_tensor *x, const mc_tensor *ids,
                            mc_tensor *xp, mc_tensor *slot, mc_tensor *offsets, mc_err *err)
{
    if (!act_ok(be, x, 0, "moe_permute: x", err) || !arg_ok(be, ids, "moe_permute: ids", err))
        return FAIL_ARG();
    int64_t n = mc_tensor_rows(x), k = mc_tensor_cols(ids);
    if (!i32_ok(be, ids, 0, n, -1, "moe_permute: ids", err) ||
        !i32_ok(be, slot, 1, n, k, "moe_permute: slot", err) ||
        !act_ok(be, xp, 1, "moe_permute: xp", err) ||
        !arg_ok(be, offsets, "moe_permute: offsets", err))
        return FAIL_ARG();
    if (mc_tensor_rows(xp) != n * k || mc_tensor_cols(xp) != mc_tensor_cols(x) ||
        n * k > INT_MAX)
        return mc_err_set(err, MC_ERR_ARG, "moe_permute: xp is (%lld, %lld), want (%lld, %lld)",
                          (long long)mc_tensor_rows(xp), (long long)mc_tensor_cols(xp),
                          (long long)(n * k), (long long)mc_tensor_cols(x));
    if (!i32_ok(be, offsets, 1, 1, mc_tensor_nelems(offsets), "moe_permute: offsets", err))
        return FAIL_ARG();
    if (mc_tensor_nelems(offsets) < 2)
        return mc_err_set(err, MC_ERR_ARG, "moe_permute: offsets has 1 element (want E + 1)");
    const mc_tensor *in[2] = {x, ids}, *outs[3] = {xp, slot, offsets};
    for (int o = 0; o < 3; o++) {
        for (int i = 0; i < 2; i++)
            if (!alias_ok(outs[o], in[i], 0, "moe_permute: output", err))
                return FAIL_ARG();
        for (int p = 0; p < o; p++)
            if (!alias_ok(outs[o], outs[p], 0, "moe_permute: output", err))
                return FAIL_ARG();
    }
    if (be->rec)
        return mc_rec_permute(be, x, ids, xp, slot, offsets, err);
    return be->iface.moe_permute(be->ctx, x, ids, xp, slot, offsets, err);
}

mc_status mc_op_moe_unpermute_weighted(mc_backend *be, const mc_tensor *yp, const mc_tensor *slot,
                                       const mc_tensor *weights, mc_tensor *y, mc_err *err)
{
    if (!act_ok(be, yp, 0, "moe_unpermute: yp", err) ||
        !arg_ok(be, slot, "moe_unpermute: slot", err) ||
        !act_ok(be, y, 1, "moe_unpermute: y", err))
        return FAIL_ARG();
    int64_t n = mc_tensor_rows(slot), k = mc_tensor_cols(slot);
    if (!i32_ok(be, slot, 0, n, k, "moe_unpermute: slot", err))
        return FAIL_ARG();
    if (mc_tensor_rows(y) != n || mc_tensor_cols(y) != mc_tensor_cols(yp))
        return mc_err_set(err, MC_ERR_ARG, "moe_unpermute: y is (%lld, %lld), want (%lld, %lld)",
                          (long long)mc_tensor_rows(y), (long long)mc_tensor_cols(y),
                          (long long)n, (long long)mc_tensor_cols(yp));
    if (weights) {
        if (!act_ok(be, weights, 0, "moe_unpermute: weights", err) ||
            !same_rows_cols(slot, weights, "moe_unpermute: weights", err) ||
            !alias_ok(y, weights, 0, "moe_unpermute: y", err))
            return FAIL_ARG();
    }
    if (!alias_ok(y, yp, 0, "moe_unpermute: y", err) ||
        !alias_ok(y, slot, 0, "moe_unpermute: y", err))
        return FAIL_ARG();
    if (be->rec)
        return mc_rec_unpermute(be, yp, slot, weights, y, err);
    return be->iface.moe_unpermute_weighted(be->ctx, yp, slot, weights, y, err);
}

/* Expert e's weight `w` (a 2-D weight of out x in) for grouped_experts.
 * Checked first without an error (so without formatting its name: three
 * weights of every expert of the layer, every step), then again with one
 * where it fails. */
static int expert_w_ok(mc_backend *be, const mc_tensor *w, const char *name, int e, int64_t out,
                       int64_t in, const mc_tensor *y, mc_err *err)
{
    int shape_ok = w && w->ndim == 2 && mc_backend_is_weight_dtype(w->dtype) &&
                   w->shape[0] == out && w->shape[1] == in;
    if (shape_ok && arg_ok(be, w, "", NULL) && alias_ok(y, w, 0, "", NULL))
        return 1;
    char what[64];
    snprintf(what, sizeof what, "grouped_experts: %s[%d]", name, e);
    if (!arg_ok(be, w, what, err) || !alias_ok(y, w, 0, what, err))
        return 0;
    if (!shape_ok) {
        mc_err_set(err, MC_ERR_ARG, "%s: %s (%lld, %lld) with %d dimensions, want a 2-D weight "
                   "(%lld, %lld)", what, mc_dtype_name(w->dtype), (long long)w->shape[0],
                   (long long)(w->ndim > 1 ? w->shape[1] : 0), w->ndim, (long long)out,
                   (long long)in);
        return 0;
    }
    return 1;
}

mc_status mc_op_grouped_experts(mc_backend *be, const mc_tensor *x, const mc_tensor *offsets,
                                int n_experts, const mc_tensor *gate, const mc_tensor *up,
                                const mc_tensor *down, const mc_experts_opts *opts, mc_tensor *y,
                                mc_err *err)
{
    if (!act_ok(be, x, 0, "grouped_experts: x", err) ||
        !act_ok(be, y, 1, "grouped_experts: y", err) ||
        !same_rows_cols(x, y, "grouped_experts: y", err) ||
        !alias_ok(y, x, 0, "grouped_experts: y", err))
        return FAIL_ARG();
    int64_t m = mc_tensor_rows(x), H = mc_tensor_cols(x);
    if (m > INT_MAX)
        return mc_err_set(err, MC_ERR_ARG, "grouped_experts: x has %lld rows", (long long)m);
    if (n_experts < 1 || !gate || !up || !down)
        return mc_err_set(err, MC_ERR_ARG, "grouped_experts: n_experts = %d%s", n_experts,
                          n_experts >= 1 ? " with a NULL gate, up or down array" : "");
    if (!i32_ok(be, offsets, 0, 1, (int64_t)n_experts + 1, "grouped_experts: offsets", err) ||
        !alias_ok(y, offsets, 0, "grouped_experts: y", err))
        return FAIL_ARG();
    for (int e = 0; e < n_experts; e++) {
        int64_t I = gate[e].ndim == 2 ? gate[e].shape[0] : 0;
        if (!expert_w_ok(be, &gate[e], "gate", e, I, H, y, err) ||
            !expert_w_ok(be, &up[e], "up", e, I, H, y, err) ||
            !expert_w_ok(be, &down[e], "down", e, H, I, y, err))
            return FAIL_ARG();
    }
    if (opts) {
        if (!(opts->swiglu_limit >= 0 && opts->swiglu_limit < INFINITY))
            return mc_err_set(err, MC_ERR_ARG, "grouped_experts: opts.swiglu_limit = %g",
                              (double)opts->swiglu_limit);
        if (opts->row_weight &&
            (!act_ok(be, opts->row_weight, 0, "grouped_experts: opts.row_weight", err) ||
             !alias_ok(y, opts->row_weight, 0, "grouped_experts: y", err)))
            return FAIL_ARG();
        if (opts->row_weight && mc_tensor_nelems(opts->row_weight) != m)
            return mc_err_set(err, MC_ERR_ARG, "grouped_experts: opts.row_weight has %lld "
                              "elements, x has %lld rows",
                              (long long)mc_tensor_nelems(opts->row_weight), (long long)m);
    }
    if (be->rec)
        return mc_rec_experts(be, x, offsets, n_experts, gate, up, down, opts, y, err);
    return be->iface.grouped_experts(be->ctx, x, offsets, n_experts, gate, up, down, opts, y, err);
}

mc_status mc_op_layernorm(mc_backend *be, const mc_tensor *x, const mc_tensor *w,
                          const mc_tensor *b, float eps, mc_tensor *y, mc_err *err)
{
    if (!act_ok(be, x, 0, "layernorm: x", err) || !act_ok(be, y, 1, "layernorm: y", err) ||
        !same_rows_cols(x, y, "layernorm: y", err) || !alias_ok(y, x, 1, "layernorm: y", err))
        return FAIL_ARG();
    int64_t d = mc_tensor_cols(x);
    if ((w && (!vec_ok(be, w, d, "layernorm: w", err) ||
               !alias_ok(y, w, 0, "layernorm: y", err))) ||
        (b && (!vec_ok(be, b, d, "layernorm: b", err) ||
               !alias_ok(y, b, 0, "layernorm: y", err))))
        return FAIL_ARG();
    if (!(eps >= 0))
        return mc_err_set(err, MC_ERR_ARG, "layernorm: eps = %g", (double)eps);
    if (be->rec)
        return mc_rec_layernorm(be, x, w, b, eps, y, err);
    return be->iface.layernorm(be->ctx, x, w, b, eps, y, err);
}

/* ---- sparse attention (DeepSeek-V3.2 indexer) ---- */

mc_status mc_op_indexer_topk(mc_backend *be, const mc_tensor *iq, const mc_tensor *w,
                             const mc_tensor *key_pages, const mc_kv_index *ix,
                             const mc_indexer_opts *opt, mc_tensor *sel, mc_err *err)
{
    if (!opt)
        return mc_err_set(err, MC_ERR_ARG, "indexer_topk: opt is NULL");
    if (opt->k < 1 || !isfinite(opt->score_scale) || !isfinite(opt->weight_scale))
        return mc_err_set(err, MC_ERR_ARG, "indexer_topk: opt.%s = %g (want %s)",
                          opt->k < 1 ? "k" : !isfinite(opt->score_scale) ? "score_scale"
                                                                         : "weight_scale",
                          opt->k < 1 ? (double)opt->k
                          : !isfinite(opt->score_scale) ? (double)opt->score_scale
                                                        : (double)opt->weight_scale,
                          opt->k < 1 ? ">= 1" : "a finite number");
    if (!act_ok(be, iq, 0, "indexer_topk: iq", err) || !act_ok(be, w, 0, "indexer_topk: w", err) ||
        !kv_pages_ok(be, key_pages, 3, 0, "indexer_topk: key_pages", err))
        return FAIL_ARG();
    if (iq->ndim != 3 || iq->shape[2] != key_pages->shape[2])
        return mc_err_set(err, MC_ERR_ARG, "indexer_topk: iq has %d dimensions, last %lld (want "
                          "(n, ih, %lld))", iq->ndim, (long long)mc_tensor_cols(iq),
                          (long long)key_pages->shape[2]);
    int64_t n = iq->shape[0], ih = iq->shape[1];
    if (w->ndim != 2 || w->shape[0] != n || w->shape[1] != ih)
        return mc_err_set(err, MC_ERR_ARG, "indexer_topk: w is not (%lld, %lld) (one weight per "
                          "token and indexer head)", (long long)n, (long long)ih);
    if (!i32_ok(be, sel, 1, n, opt->k, "indexer_topk: sel", err) ||
        !index_ok(be, ix, n, "indexer_topk", err))
        return FAIL_ARG();
    if (!alias_ok(sel, iq, 0, "indexer_topk: sel", err) ||
        !alias_ok(sel, w, 0, "indexer_topk: sel", err) ||
        !alias_ok(sel, key_pages, 0, "indexer_topk: sel", err) ||
        !index_alias_ok(sel, ix, "indexer_topk: sel", err))
        return FAIL_ARG();
    if (be->capturing)
        return mc_graph_refuse(be, "indexer_topk", err);
    return be->iface.indexer_topk(be->ctx, iq, w, key_pages, ix, opt, sel, err);
}
