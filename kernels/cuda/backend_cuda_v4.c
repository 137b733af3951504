/* cuda/backend_cuda_v4.c - the CUDA backend's DeepSeek-V4 op entries
 * (kernels in cuda/v4.cu), in place of the front end's host round trip
 * (backend_ops_v4.c), which MC_CUDA_V4=host keeps for comparisons.
 *
 * The front end has checked dtypes, shapes, buffers and aliasing. The
 * contents only the device sees (each token's sequence, position and block
 * ids, compress's window start, attention's sel entries, hash routing's
 * ids and table) are checked by one device kernel (mck_v4_check) before
 * the op's kernels, which do nothing when it finds a bad token (a token past
 * this backend's own limit, an n_row longer than the block table holds, is
 * reported only when no token is refused as the CPU would). Deferred
 * (the default) the refusal is noted for the next wait, as the other paged
 * ops'; with sync_checks the answer is read back at the op and worded as
 * the CPU op words it (the kernel returns what was wrong and the values). */
#include "backend.h"
#include "cuda/backend_cuda_internal.h"

#include <string.h>

#define AF32(t) ((float *)mc_cuda_at(t))
#define AI32(t) ((int32_t *)mc_cuda_at(t))
#define OPT_F32(t) ((t) ? AF32(t) : NULL)
#define LD(t) ((t) ? (t)->row_stride : 0)

/* The CPU op's message for the refusal the check kernel found (in: its
 * info words). */
static mc_status v4_refusal(const char *op, const mck_v4_chk *k, const long long *in, mc_err *err)
{
    long long t = in[0], a = in[2], b = in[3], c = in[4];
    switch ((int)in[1]) {
    case MCK_V4_BAD_SEQ:
        return mc_err_set(err, MC_ERR_ARG,
                          "%s: token %lld: seq = %d is outside the block table's "
                          "%lld sequences",
                          op, t, (int)a, (long long)k->kv.n_seqs);
    case MCK_V4_BAD_POS:
        return mc_err_set(err, MC_ERR_ARG,
                          "%s: token %lld: pos = %d is outside the block table's "
                          "capacity (%lld blocks of %lld positions)",
                          op, t, (int)a, (long long)k->kv.max_blocks,
                          (long long)k->kv.block_size);
    case MCK_V4_BAD_BLOCK:
        return mc_err_set(err, MC_ERR_ARG,
                          "%s: token %lld: block_table[%d][%lld] = %d is "
                          "outside the cache's %lld blocks",
                          op, t, (int)a, b, (int)c, k->kv.n_pages);
    case MCK_V4_BAD_WINDOW:
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_compress: token %lld: window start %lld is "
                          "past the %lld rows of cs",
                          t, a, k->P);
    case MCK_V4_BAD_SEL:
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_attention: token %lld: sel[%d] = %d is "
                          "outside the %d entries it sees",
                          t, (int)a, (int)b, (int)c);
    case MCK_V4_BAD_NROW:
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "v4_index_topk: token %lld: opts.n_row = %lld is more than the %lld "
                          "entries its block table holds (the CUDA backend sizes the score rows "
                          "by the table)",
                          t, a, b);
    case MCK_V4_BAD_ID:
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_hash_route: token %lld: id %d is outside the "
                          "table's %lld rows",
                          t, (int)a, k->V);
    case MCK_V4_BAD_TABLE:
        return mc_err_set(err, MC_ERR_ARG,
                          "v4_hash_route: table[%d][%d] = %d is outside "
                          "[0, %d)",
                          (int)a, (int)b, (int)c, k->E);
    default:
        return mc_err_set(err, MC_ERR_INTERNAL, "%s: token %lld: refused by the device's check "
                          "for an unknown reason (%lld)", op, t, in[1]);
    }
}

/* Queues the content check of n tokens (chk: the op's MC_CUDA_CHK_*);
 * with sync_checks waits for its answer and returns the refusal. */
static mc_status v4_check(mc_cuda_ctx *c, const char *op, int chk, const mck_v4_chk *k,
                          long long n, mc_err *err)
{
    mck_defer d = mc_cuda_defer_of(c, chk, 0);
    mc_status st = mc_cuda_check(mck_v4_check(c->stream, k, n, c->d_info, d), op, err);
    if (st != MC_OK || !c->sync_checks)
        return st;
    st = mc_cuda_read_back(c, op, c->h_info, c->d_info, 5 * sizeof *c->h_info, err);
    if (st != MC_OK)
        return st;
    return c->h_info[0] >= 0 ? v4_refusal(op, k, c->h_info, err) : MC_OK;
}

mc_status mc_cuda_v4_hc_pre(void *ctx, const mc_tensor *x, const mc_tensor *mix,
                            const mc_tensor *base, const mc_tensor *scale, const mc_v4_hc_opts *o,
                            mc_tensor *post, mc_tensor *comb, mc_tensor *y, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "v4_hc_pre";
    mc_status st = mc_cuda_use(c, op, err);
    if (st != MC_OK)
        return st;
    return mc_cuda_check(mck_v4_hc_pre(c->stream, AF32(x), x->row_stride, AF32(mix),
                                       mix->row_stride, AF32(base), AF32(scale), o->hc, o->iters,
                                       o->eps, (int)mc_tensor_cols(y), mc_tensor_rows(x),
                                       OPT_F32(post), LD(post), OPT_F32(comb), LD(comb), AF32(y),
                                       y->row_stride),
                         op, err);
}

mc_status mc_cuda_v4_hc_post(void *ctx, mc_tensor *x, const mc_tensor *post,
                             const mc_tensor *comb, const mc_tensor *y, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "v4_hc_post";
    mc_status st = mc_cuda_use(c, op, err);
    if (st != MC_OK)
        return st;
    if (mc_tensor_cols(post) > 64)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "cuda backend: v4_hc_post: %lld streams are "
                          "more than this backend's kernel mixes (64)",
                          (long long)mc_tensor_cols(post));
    return mc_cuda_check(mck_v4_hc_post(c->stream, AF32(x), x->row_stride, AF32(post),
                                        post->row_stride, AF32(comb), comb->row_stride, AF32(y),
                                        y->row_stride, (int)mc_tensor_cols(post),
                                        (int)mc_tensor_cols(y), mc_tensor_rows(x)),
                         op, err);
}

mc_status mc_cuda_v4_compress(void *ctx, const mc_tensor *kv_pages, const mc_tensor *gate_pages,
                              const mc_tensor *ape, const mc_tensor *norm, const mc_tensor *cs,
                              const mc_tensor *sn, const mc_kv_index *ix,
                              const mc_v4_comp_opts *o, mc_tensor *out_pages, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "v4_compress";
    mc_status st = mc_cuda_use(c, op, err);
    if (st != MC_OK)
        return st;
    int64_t cd = out_pages->shape[2];
    if (cd > 8192)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "cuda backend: v4_compress: entries of %lld "
                          "columns are more than this backend's kernel holds (8192)",
                          (long long)cd);
    mck_kv kv = mc_cuda_kv_of(ix, kv_pages);
    mck_v4_chk k = {.kind = MCK_V4_COMPRESS, .kv = kv, .rate = o->rate, .overlap = o->overlap,
                    .P = mc_tensor_rows(cs)};
    st = v4_check(c, op, MC_CUDA_CHK_V4_COMPRESS, &k, kv.n, err);
    if (st != MC_OK)
        return st;
    return mc_cuda_check(mck_v4_compress(c->stream, &kv, AF32(kv_pages), kv_pages->row_stride,
                                         AF32(gate_pages), gate_pages->row_stride, AF32(ape),
                                         ape->row_stride, AF32(norm), AF32(cs), cs->row_stride,
                                         AF32(sn), sn->row_stride, o->rate, o->overlap, (int)cd,
                                         2 * (int)mc_tensor_cols(cs), o->eps, AF32(out_pages),
                                         out_pages->row_stride, c->d_info),
                         op, err);
}

mc_status mc_cuda_v4_index_topk(void *ctx, const mc_tensor *iq, const mc_tensor *w,
                                const mc_tensor *key_pages, const mc_kv_index *ix,
                                const mc_v4_index_opts *o, mc_tensor *sel, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "v4_index_topk";
    mc_status st = mc_cuda_use(c, op, err);
    if (st != MC_OK)
        return st;
    mck_kv kv = mc_cuda_kv_of(ix, key_pages);
    /* each token's score row: at most the entries its block table holds
     * (what the executor pads to; a longer n_row is refused) */
    long long cap = (long long)kv.max_blocks * kv.block_size / o->rate;
    if ((cap + 127) / 128 > 65535)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "cuda backend: v4_index_topk: a block table "
                          "of %lld entries is more than this backend's kernel scores", cap);
    const int32_t *n_row = o->n_row ? AI32(o->n_row) : NULL;
    mck_v4_chk k = {.kind = MCK_V4_INDEX, .kv = kv, .rate = o->rate, .n_row = n_row,
                    .cap = cap};
    st = v4_check(c, op, MC_CUDA_CHK_V4_INDEX, &k, kv.n, err);
    if (st != MC_OK)
        return st;
    size_t row_bytes = (size_t)(cap > 0 ? cap : 1) * sizeof(mck_v4_sel);
    long long chunk = (long long)(c->v4_index_bytes / row_bytes); /* tokens at once */
    if (chunk < 1)
        chunk = 1;
    if (chunk > kv.n)
        chunk = kv.n;
    void *s = NULL;
    if (kv.n > 0 && (st = mc_cuda_scratch(c, (size_t)chunk * row_bytes, &s, op, err)) != MC_OK)
        return st;
    int ih = (int)iq->shape[1], id = (int)iq->shape[2];
    for (long long t0 = 0; t0 < kv.n && st == MC_OK; t0 += chunk) {
        long long nt = kv.n - t0 < chunk ? kv.n - t0 : chunk;
        st = mc_cuda_check(mck_v4_index_topk(c->stream, &kv, t0, nt, AF32(iq), iq->row_stride, ih,
                                             id, AF32(w), w->row_stride, AF32(key_pages),
                                             key_pages->row_stride, o->rate, n_row,
                                             o->score_scale, o->weight_scale, o->k, cap, s,
                                             AI32(sel), sel->row_stride, c->d_info),
                           op, err);
    }
    return st;
}

mc_status mc_cuda_v4_attention(void *ctx, const mc_tensor *q, const mc_tensor *kv_pages,
                               const mc_tensor *comp_pages, const mc_tensor *sinks,
                               const mc_tensor *sel, const mc_kv_index *ix,
                               const mc_v4_attn_opts *o, mc_tensor *y, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "v4_attention";
    mc_status st = mc_cuda_use(c, op, err);
    if (st != MC_OK)
        return st;
    int nh = (int)q->shape[1], hd = (int)q->shape[2];
    if (hd > 5120)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "cuda backend: v4_attention: heads of %d "
                          "columns are more than this backend's kernel holds (5120)", hd);
    if (nh > 65535)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "cuda backend: v4_attention: %d heads are "
                          "more than one launch takes (65535)", nh);
    mck_kv kv = mc_cuda_kv_of(ix, kv_pages);
    int ksel = sel ? (int)mc_tensor_cols(sel) : 0;
    mck_v4_chk k = {.kind = MCK_V4_ATTENTION, .kv = kv, .rate = o->rate, .window = o->window,
                    .has_comp = comp_pages != NULL, .sel = sel ? AI32(sel) : NULL,
                    .sel_ld = LD(sel), .sel_k = ksel};
    st = v4_check(c, op, MC_CUDA_CHK_V4_ATTENTION, &k, kv.n, err);
    if (st != MC_OK)
        return st;
    return mc_cuda_check(mck_v4_attention(c->stream, &kv, AF32(q), q->row_stride, nh, hd,
                                          AF32(kv_pages), kv_pages->row_stride,
                                          OPT_F32(comp_pages), LD(comp_pages), AF32(sinks),
                                          sel ? AI32(sel) : NULL, LD(sel), ksel, o->window,
                                          o->rate, o->scale, AF32(y), y->row_stride, c->d_info),
                         op, err);
}

mc_status mc_cuda_v4_hash_route(void *ctx, const mc_tensor *logits, const mc_tensor *tok,
                                const mc_tensor *table, const mc_router_opts *opts,
                                mc_tensor *ids, mc_tensor *weights, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "v4_hash_route";
    mc_status st = mc_cuda_use(c, op, err);
    if (st != MC_OK)
        return st;
    int64_t n = mc_tensor_rows(logits);
    mck_v4_chk k = {.kind = MCK_V4_HASH, .tok = AI32(tok), .table = AI32(table),
                    .table_ld = table->row_stride, .V = mc_tensor_rows(table), .k = opts->k,
                    .E = (int)mc_tensor_cols(logits)};
    st = v4_check(c, op, MC_CUDA_CHK_V4_HASH, &k, n, err);
    if (st != MC_OK)
        return st;
    return mc_cuda_check(mck_v4_hash_route(c->stream, AF32(logits), logits->row_stride, n,
                                           AI32(tok), AI32(table), table->row_stride, opts->k,
                                           opts->score == MC_ROUTE_SIGMOID, opts->norm_eps,
                                           opts->scale, AI32(ids), ids->row_stride,
                                           AF32(weights), weights->row_stride, c->d_info),
                         op, err);
}
