/* backend_ops_internal.h - the argument checks the ops' front ends share
 * (backend_ops.c, backend_ops_v4.c). Each returns 1 when the argument is
 * fine, else 0 with err naming it ("op: arg"); FAIL_ARG() is the status to
 * return then. Not for use outside kernels/. */
#ifndef MC_BACKEND_OPS_INTERNAL_H
#define MC_BACKEND_OPS_INTERNAL_H

#include "backend.h"
#include "backend_impl.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* A well-formed tensor of backend be; `what` is "op: arg". */
static inline int arg_ok(mc_backend *be, const mc_tensor *t, const char *what, mc_err *err)
{
    if (!mc_tensor_check(t, what, err))
        return 0;
    if (t->buf->be != be) {
        mc_err_set(err, MC_ERR_ARG, "%s: tensor is on the %s backend, not %s", what,
                   t->buf->be->iface.name, be->iface.name);
        return 0;
    }
    if (t->pack != 0 && strcmp(be->iface.name, "cpu") != 0) {
        mc_err_set(err, MC_ERR_ARG, "%s: its rows are repacked for the CPU kernels (layout %d); "
                   "the %s backend reads weights as stored", what, t->pack, be->iface.name);
        return 0;
    }
    return 1;
}

/* An F32 (or, with bf16, BF16) tensor, not transposed; writable if out. */
static inline int elem_ok(mc_backend *be, const mc_tensor *t, int out, int bf16, const char *what,
                          mc_err *err)
{
    if (!arg_ok(be, t, what, err))
        return 0;
    if ((t->dtype != MC_DT_F32 && !(bf16 && t->dtype == MC_DT_BF16)) || t->transposed) {
        mc_err_set(err, MC_ERR_ARG, "%s: dtype %s%s is unsupported here (want F32 activations)",
                   what, mc_dtype_name(t->dtype), t->transposed ? " (transposed)" : "");
        return 0;
    }
    if (out && t->buf->borrowed) {
        mc_err_set(err, MC_ERR_ARG, "%s: output is in a read-only buffer", what);
        return 0;
    }
    return 1;
}

/* An F32 activation, not transposed; writable if out. */
static inline int act_ok(mc_backend *be, const mc_tensor *t, int out, const char *what, mc_err *err)
{
    return elem_ok(be, t, out, 0, what, err);
}

static inline int same_rows_cols(const mc_tensor *a, const mc_tensor *b, const char *what, mc_err *err)
{
    if (mc_tensor_rows(a) == mc_tensor_rows(b) && mc_tensor_cols(a) == mc_tensor_cols(b))
        return 1;
    mc_err_set(err, MC_ERR_ARG, "%s: shape (%lld, %lld) does not match (%lld, %lld)", what,
               (long long)mc_tensor_rows(b), (long long)mc_tensor_cols(b),
               (long long)mc_tensor_rows(a), (long long)mc_tensor_cols(a));
    return 0;
}

static inline int same_view(const mc_tensor *a, const mc_tensor *b)
{
    return a->buf == b->buf && a->offset == b->offset && a->dtype == b->dtype &&
           a->row_stride == b->row_stride && mc_tensor_rows(a) == mc_tensor_rows(b) &&
           mc_tensor_cols(a) == mc_tensor_cols(b);
}

static inline int overlap(const mc_tensor *a, const mc_tensor *b)
{
    if (a->buf != b->buf)
        return 0;
    size_t ea = mc_tensor_extent(a), eb = mc_tensor_extent(b);
    return a->offset < b->offset + eb && b->offset < a->offset + ea;
}

/* y must not overlap x unless it is x itself and `may_alias`. */
static inline int alias_ok(const mc_tensor *y, const mc_tensor *x, int may_alias, const char *what,
                    mc_err *err)
{
    if (!overlap(y, x) || (may_alias && same_view(y, x)))
        return 1;
    mc_err_set(err, MC_ERR_ARG, "%s: output overlaps an input%s", what,
               may_alias ? " without being the same tensor" : "");
    return 0;
}

#define FAIL_ARG() (err && err->status != MC_OK ? err->status : MC_ERR_ARG)

/* An I32 tensor of `rows` x `cols` (cols < 0: any), not transposed; writable if out. */
static inline int i32_ok(mc_backend *be, const mc_tensor *t, int out, int64_t rows, int64_t cols,
                  const char *what, mc_err *err)
{
    if (!arg_ok(be, t, what, err))
        return 0;
    if (t->dtype != MC_DT_I32 || t->transposed || mc_tensor_rows(t) != rows ||
        (cols >= 0 && mc_tensor_cols(t) != cols)) {
        mc_err_set(err, MC_ERR_ARG, "%s: %s (%lld, %lld), want I32 (%lld, %lld)", what,
                   mc_dtype_name(t->dtype), (long long)mc_tensor_rows(t),
                   (long long)mc_tensor_cols(t), (long long)rows, (long long)cols);
        return 0;
    }
    if (out && t->buf->borrowed) {
        mc_err_set(err, MC_ERR_ARG, "%s: output is in a read-only buffer", what);
        return 0;
    }
    return 1;
}

/* An F32 vector of n elements (one row). */
static inline int vec_ok(mc_backend *be, const mc_tensor *t, int64_t n, const char *what, mc_err *err)
{
    if (!act_ok(be, t, 0, what, err))
        return 0;
    if (mc_tensor_rows(t) == 1 && mc_tensor_cols(t) == n)
        return 1;
    mc_err_set(err, MC_ERR_ARG, "%s: %lld elements in %lld rows, want one row of %lld", what,
               (long long)mc_tensor_nelems(t), (long long)mc_tensor_rows(t), (long long)n);
    return 0;
}

/* index_ok's checks; the argument names are formatted only with an err. */
static inline int index_check(mc_backend *be, const mc_kv_index *ix, int64_t n, const char *op,
                              mc_err *err)
{
    char what[64] = "";
    if (!ix) {
        mc_err_set(err, MC_ERR_ARG, "%s: ix is NULL", op);
        return 0;
    }
    if (err)
        snprintf(what, sizeof what, "%s: ix.block_table", op);
    if (!arg_ok(be, &ix->block_table, what, err))
        return 0;
    if (ix->block_table.dtype != MC_DT_I32 || ix->block_table.ndim != 2) {
        mc_err_set(err, MC_ERR_ARG, "%s: ix.block_table is %s with %d dimensions (want I32 "
                   "(n_seqs, max_blocks))", op, mc_dtype_name(ix->block_table.dtype),
                   ix->block_table.ndim);
        return 0;
    }
    const mc_tensor *v[2] = {&ix->seq, &ix->pos};
    const char *name[2] = {"seq", "pos"};
    for (int i = 0; i < 2; i++) {
        if (err)
            snprintf(what, sizeof what, "%s: ix.%s", op, name[i]);
        if (!arg_ok(be, v[i], what, err))
            return 0;
        if (v[i]->dtype != MC_DT_I32 || v[i]->ndim != 1 || v[i]->shape[0] != n) {
            mc_err_set(err, MC_ERR_ARG, "%s: ix.%s is %s with %d dimensions of which the first "
                       "is %lld (want I32 [%lld], one per token)", op, name[i],
                       mc_dtype_name(v[i]->dtype), v[i]->ndim, (long long)v[i]->shape[0],
                       (long long)n);
            return 0;
        }
    }
    return 1;
}

/* The index of n tokens: I32 block table (n_seqs, max_blocks), seq and pos
 * [n]. Checked first without an error (nothing formatted: several calls a
 * layer, every step), then again with one where it fails. */
static inline int index_ok(mc_backend *be, const mc_kv_index *ix, int64_t n, const char *op,
                           mc_err *err)
{
    return index_check(be, ix, n, op, NULL) || index_check(be, ix, n, op, err);
}

/* (n_blocks, block_size, ...): `ndim` dimensions (0: >= 3). */
static inline int pages_dims_ok(const mc_tensor *p, int ndim, const char *what, mc_err *err)
{
    if (ndim ? p->ndim != ndim : p->ndim < 3) {
        mc_err_set(err, MC_ERR_ARG, "%s: %d dimensions (want %s%d: n_blocks, block_size, ...)",
                   what, p->ndim, ndim ? "" : ">= ", ndim ? ndim : 3);
        return 0;
    }
    return 1;
}

/* An F32 page tensor (n_blocks, block_size, ...) of `ndim` dimensions (0: >= 3). */
static inline int pages_ok(mc_backend *be, const mc_tensor *p, int ndim, int out, const char *what,
                    mc_err *err)
{
    return act_ok(be, p, out, what, err) && pages_dims_ok(p, ndim, what, err);
}

/* Pages of a KV cache: as pages_ok, or BF16 where the backend has kv_bf16. */
static inline int kv_pages_ok(mc_backend *be, const mc_tensor *p, int ndim, int out,
                              const char *what, mc_err *err)
{
    return elem_ok(be, p, out, be && be->iface.kv_bf16, what, err) &&
           pages_dims_ok(p, ndim, what, err);
}

/* b has a's blocks, block size and dtype. */
static inline int same_pages(const mc_tensor *a, const mc_tensor *b, const char *what, mc_err *err)
{
    if (a->dtype != b->dtype) {
        mc_err_set(err, MC_ERR_ARG, "%s: %s, want %s as the other pages", what,
                   mc_dtype_name(b->dtype), mc_dtype_name(a->dtype));
        return 0;
    }
    if (a->shape[0] == b->shape[0] && a->shape[1] == b->shape[1])
        return 1;
    mc_err_set(err, MC_ERR_ARG, "%s: %lld blocks of %lld, want %lld blocks of %lld", what,
               (long long)b->shape[0], (long long)b->shape[1], (long long)a->shape[0],
               (long long)a->shape[1]);
    return 0;
}

/* An output overlaps none of the index's tensors. */
static inline int index_alias_ok(const mc_tensor *y, const mc_kv_index *ix, const char *what,
                          mc_err *err)
{
    return alias_ok(y, &ix->block_table, 0, what, err) && alias_ok(y, &ix->seq, 0, what, err) &&
           alias_ok(y, &ix->pos, 0, what, err);
}

static inline int opts_ok(mc_backend *be, const mc_attn_opts *o, int64_t n, const char *op,
                   mc_err *err)
{
    char what[64];
    if (!o) {
        mc_err_set(err, MC_ERR_ARG, "%s: opt is NULL", op);
        return 0;
    }
    if (!isfinite(o->scale) || o->chunk < 0) {
        mc_err_set(err, MC_ERR_ARG, "%s: opt.%s = %g (want %s)", op,
                   isfinite(o->scale) ? "chunk" : "scale",
                   isfinite(o->scale) ? (double)o->chunk : (double)o->scale,
                   isfinite(o->scale) ? ">= 0" : "a finite number");
        return 0;
    }
    if (o->q_scale) {
        snprintf(what, sizeof what, "%s: opt.q_scale", op);
        if (!act_ok(be, o->q_scale, 0, what, err))
            return 0;
        if (o->q_scale->ndim != 1 || o->q_scale->shape[0] != n) {
            mc_err_set(err, MC_ERR_ARG, "%s: opt.q_scale has %d dimensions of which the first is "
                       "%lld (want F32 [%lld], one per token)", op, o->q_scale->ndim,
                       (long long)o->q_scale->shape[0], (long long)n);
            return 0;
        }
    }
    return 1;
}

/* A selection of positions per token: I32 (n, k), k >= 1, overlapping no output y. */
static inline int sel_ok(mc_backend *be, const mc_tensor *sel, int64_t n, const mc_tensor *y,
                  const char *what, mc_err *err)
{
    if (!i32_ok(be, sel, 0, n, sel->ndim == 2 ? sel->shape[1] : -1, what, err))
        return 0;
    if (sel->ndim != 2) {
        mc_err_set(err, MC_ERR_ARG, "%s: %d dimensions (want I32 (n, k))", what, sel->ndim);
        return 0;
    }
    return !y || alias_ok(y, sel, 0, what, err);
}

/* ---- recording (backend_graph.c): the op's call kept for mc_graph_launch
 * while be->rec is set (a backend without graphs of its own, capturing) */
mc_status mc_rec_matmul(mc_backend *be, const mc_tensor *w, const mc_tensor *x, mc_tensor *y,
                        mc_err *err);
mc_status mc_rec_rmsnorm(mc_backend *be, const mc_tensor *x, const mc_tensor *w, float eps,
                         mc_tensor *y, mc_err *err);
mc_status mc_rec_layernorm(mc_backend *be, const mc_tensor *x, const mc_tensor *w,
                           const mc_tensor *b, float eps, mc_tensor *y, mc_err *err);
mc_status mc_rec_rope(mc_backend *be, mc_tensor *x, const mc_tensor *pos, const mc_tensor *cs,
                      const mc_tensor *sn, int interleaved, mc_err *err);
/* add 1: mc_op_add, 0: mc_op_swiglu */
mc_status mc_rec_binary(mc_backend *be, int add, const mc_tensor *a, const mc_tensor *b,
                        mc_tensor *y, mc_err *err);
mc_status mc_rec_softmax(mc_backend *be, const mc_tensor *x, mc_tensor *y, mc_err *err);
mc_status mc_rec_embed(mc_backend *be, const mc_tensor *table, const mc_tensor *ids, int64_t id0,
                       mc_tensor *y, mc_err *err);
mc_status mc_rec_kv_write(mc_backend *be, const mc_kv_index *ix, const mc_tensor *src,
                          mc_tensor *pages, mc_err *err);
mc_status mc_rec_attention(mc_backend *be, const mc_tensor *q, const mc_tensor *k_pages,
                           const mc_tensor *v_pages, const mc_kv_index *ix,
                           const mc_attn_opts *opt, mc_tensor *y, mc_err *err);
mc_status mc_rec_mla_decode(mc_backend *be, const mc_tensor *q_lat, const mc_tensor *q_pe,
                            const mc_tensor *lat_pages, const mc_tensor *pe_pages,
                            const mc_kv_index *ix, const mc_attn_opts *opt, mc_tensor *y,
                            mc_err *err);
mc_status mc_rec_router_topk(mc_backend *be, const mc_tensor *logits, const mc_tensor *bias,
                             const mc_router_opts *opts, mc_tensor *ids, mc_tensor *weights,
                             mc_err *err);
mc_status mc_rec_permute(mc_backend *be, const mc_tensor *x, const mc_tensor *ids, mc_tensor *xp,
                         mc_tensor *slot, mc_tensor *offsets, mc_err *err);
mc_status mc_rec_unpermute(mc_backend *be, const mc_tensor *yp, const mc_tensor *slot,
                           const mc_tensor *weights, mc_tensor *y, mc_err *err);
mc_status mc_rec_experts(mc_backend *be, const mc_tensor *x, const mc_tensor *offsets,
                         int n_experts, const mc_tensor *gate, const mc_tensor *up,
                         const mc_tensor *down, const mc_experts_opts *opts, mc_tensor *y,
                         mc_err *err);
mc_status mc_rec_note_nonfinite(mc_backend *be, const mc_tensor *x, int64_t tag, mc_err *err);
mc_status mc_rec_topk(mc_backend *be, const mc_tensor *x, int k, int64_t id0, mc_tensor *ids,
                      mc_tensor *vals, mc_tensor *lse, mc_err *err);
mc_status mc_rec_memset(mc_backend *be, mc_buffer *b, size_t off, int value, size_t n,
                        mc_err *err);

#endif
