/* backend_ops_v4.c - the front ends of the DeepSeek-V4 ops (backend.h's
 * "DeepSeek-V4" section): argument checks naming the one at fault, then the
 * backend's entry. A device backend (no host memory) without an entry runs
 * the op on the host: its tensors downloaded to the CPU backend, the CPU op,
 * the outputs uploaded (correct to the bit, and as slow as the copies: the
 * CPU acting as a device, and the CUDA backend with MC_CUDA_V4=host, whose
 * own kernels are cuda/v4.cu); a host-memory backend without the entry
 * refuses it (MC_ERR_UNSUPPORTED). */
#include "backend.h"
#include "backend_impl.h"
#include "backend_ops_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* While a graph is captured the V4 ops are refused whatever the backend
 * (the round trip waits; the executor's V4 steps upload inside a step, so a
 * capture of one fails anyway). A host-memory backend without the V4
 * entries refuses them (a device backend takes the host round trip below). */
#define V4_ENTRY(entry, op)                                                                        \
    do {                                                                                           \
        if (be->capturing)                                                                         \
            return mc_graph_refuse(be, op, err);                                                   \
        if (!be->iface.entry && be->iface.host_memory)                                             \
            return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: not implemented by the %s backend",    \
                              op, be->iface.name);                                                 \
    } while (0)

/* ---- the host round trip ---- */

/* A device tensor's rows as a packed tensor of the host backend. */
typedef struct {
    mc_tensor t;
    mc_buffer *b;
    mc_tensor *dev; /* uploaded back at the end when out */
    int out;
} host_copy;

#define HOST_COPIES 16

typedef struct {
    mc_backend *hb;
    host_copy c[HOST_COPIES];
    int n;
    mc_status st;
} host_trip;

static mc_status trip_begin(mc_backend *be, host_trip *h, mc_err *err) {
    memset(h, 0, sizeof *h);
    if (!be->host && (h->st = mc_backend_cpu_init(&be->host, err)) != MC_OK) return h->st;
    h->hb = be->host;
    return MC_OK;
}

/* d's copy on the host (downloaded: outputs too, so that the rows an op
 * leaves alone go back as they were); NULL for NULL. Once h->st fails the
 * rest are skipped. (The front end has refused repacked rows on a device and
 * scales on anything but FP8 weights; mc_tensor_download refuses transposed
 * storage.) */
static const mc_tensor *trip_get(host_trip *h, const mc_tensor *d, int out, mc_err *err) {
    if (!d || h->st != MC_OK) return NULL;
    if (h->n == HOST_COPIES) {
        h->st = mc_err_set(err, MC_ERR_INTERNAL, "host round trip: more than %d tensors",
                           HOST_COPIES);
        return NULL;
    }
    host_copy *c = &h->c[h->n++];
    c->dev = (mc_tensor *)d;
    c->out = out;
    size_t bytes = (size_t)mc_tensor_rows(d) * mc_dtype_row_bytes(d->dtype, mc_tensor_cols(d));
    if ((h->st = mc_buffer_alloc(h->hb, bytes ? bytes : 1, &c->b, err)) == MC_OK &&
        (h->st = mc_tensor_init(&c->t, c->b, 0, d->dtype, d->ndim, d->shape, err)) == MC_OK)
        h->st = mc_tensor_download(d, mc_buffer_host(c->b), err);
    return h->st == MC_OK ? &c->t : NULL;
}

static int trip_index(host_trip *h, const mc_kv_index *ix, mc_kv_index *out, mc_err *err) {
    const mc_tensor *b = trip_get(h, &ix->block_table, 0, err), *s = trip_get(h, &ix->seq, 0, err),
                    *p = trip_get(h, &ix->pos, 0, err);
    if (h->st != MC_OK) return 0;
    *out = (mc_kv_index){.block_table = *b, .seq = *s, .pos = *p};
    return 1;
}

/* st is the op's status: on MC_OK the outputs go back to the device. */
static mc_status trip_end(host_trip *h, mc_status st, mc_err *err) {
    if (h->st != MC_OK) st = h->st;
    for (int i = 0; i < h->n; i++) {
        host_copy *c = &h->c[i];
        if (st == MC_OK && c->out) st = mc_tensor_upload(c->dev, mc_buffer_host(c->b), err);
        mc_buffer_free(c->b);
    }
    return st;
}

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
    if (be->iface.v4_hc_pre)
        return be->iface.v4_hc_pre(be->ctx, x, mix, base, scale, o, post, comb, y, err);
    host_trip h;
    if (trip_begin(be, &h, err) != MC_OK) return h.st;
    const mc_tensor *hx = trip_get(&h, x, 0, err), *hm = trip_get(&h, mix, 0, err),
                    *hb = trip_get(&h, base, 0, err), *hs = trip_get(&h, scale, 0, err);
    mc_tensor *hp = (mc_tensor *)trip_get(&h, post, 1, err),
              *hcb = (mc_tensor *)trip_get(&h, comb, 1, err), *hy = (mc_tensor *)trip_get(&h, y, 1, err);
    return trip_end(&h, h.st != MC_OK ? h.st
                                      : mc_op_v4_hc_pre(h.hb, hx, hm, hb, hs, o, hp, hcb, hy, err),
                    err);
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
    if (be->iface.v4_hc_post) return be->iface.v4_hc_post(be->ctx, x, post, comb, y, err);
    host_trip h;
    if (trip_begin(be, &h, err) != MC_OK) return h.st;
    mc_tensor *hx = (mc_tensor *)trip_get(&h, x, 1, err);
    const mc_tensor *hp = trip_get(&h, post, 0, err), *hcb = trip_get(&h, comb, 0, err),
                    *hy = trip_get(&h, y, 0, err);
    return trip_end(&h, h.st != MC_OK ? h.st : mc_op_v4_hc_post(h.hb, hx, hp, hcb, hy, err), err);
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
    if (be->iface.v4_compress)
        return be->iface.v4_compress(be->ctx, kv_pages, gate_pages, ape, norm, cs, sn, ix, o,
                                     out_pages, err);
    host_trip h;
    mc_kv_index hix;
    if (trip_begin(be, &h, err) != MC_OK) return h.st;
    const mc_tensor *hk = trip_get(&h, kv_pages, 0, err), *hg = trip_get(&h, gate_pages, 0, err),
                    *ha = trip_get(&h, ape, 0, err), *hn = trip_get(&h, norm, 0, err),
                    *hc = trip_get(&h, cs, 0, err), *hs = trip_get(&h, sn, 0, err);
    mc_tensor *ho = (mc_tensor *)trip_get(&h, out_pages, 1, err);
    if (!trip_index(&h, ix, &hix, err)) return trip_end(&h, h.st, err);
    return trip_end(&h, mc_op_v4_compress(h.hb, hk, hg, ha, hn, hc, hs, &hix, o, ho, err), err);
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
    if (be->iface.v4_index_topk)
        return be->iface.v4_index_topk(be->ctx, iq, w, key_pages, ix, o, sel, err);
    host_trip h;
    mc_kv_index hix;
    if (trip_begin(be, &h, err) != MC_OK) return h.st;
    mc_v4_index_opts ho = *o;
    const mc_tensor *hq = trip_get(&h, iq, 0, err), *hw = trip_get(&h, w, 0, err),
                    *hk = trip_get(&h, key_pages, 0, err);
    ho.n_row = trip_get(&h, o->n_row, 0, err);
    mc_tensor *hs = (mc_tensor *)trip_get(&h, sel, 1, err);
    if (!trip_index(&h, ix, &hix, err)) return trip_end(&h, h.st, err);
    return trip_end(&h, mc_op_v4_index_topk(h.hb, hq, hw, hk, &hix, &ho, hs, err), err);
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
    if (be->iface.v4_attention)
        return be->iface.v4_attention(be->ctx, q, kv_pages, comp_pages, sinks, sel, ix, o, y, err);
    host_trip h;
    mc_kv_index hix;
    if (trip_begin(be, &h, err) != MC_OK) return h.st;
    const mc_tensor *hq = trip_get(&h, q, 0, err), *hk = trip_get(&h, kv_pages, 0, err),
                    *hc = trip_get(&h, comp_pages, 0, err), *hs = trip_get(&h, sinks, 0, err),
                    *hl = trip_get(&h, sel, 0, err);
    mc_tensor *hy = (mc_tensor *)trip_get(&h, y, 1, err);
    if (!trip_index(&h, ix, &hix, err)) return trip_end(&h, h.st, err);
    return trip_end(&h, mc_op_v4_attention(h.hb, hq, hk, hc, hs, hl, &hix, o, hy, err), err);
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
    if (be->iface.v4_hash_route)
        return be->iface.v4_hash_route(be->ctx, logits, tok, table, opts, ids, weights, err);
    host_trip h;
    if (trip_begin(be, &h, err) != MC_OK) return h.st;
    const mc_tensor *hl = trip_get(&h, logits, 0, err), *ht = trip_get(&h, tok, 0, err),
                    *hb = trip_get(&h, table, 0, err);
    mc_tensor *hi = (mc_tensor *)trip_get(&h, ids, 1, err),
              *hw = (mc_tensor *)trip_get(&h, weights, 1, err);
    return trip_end(&h, h.st != MC_OK ? h.st
                                      : mc_op_v4_hash_route(h.hb, hl, ht, hb, opts, hi, hw, err),
                    err);
}
