/* cuda/backend_cuda_attn.c - the CUDA backend's paged-KV-cache op entries:
 * kv_write, GQA attention, MLA absorbed attention (with V3.2's sparse
 * selection) and the V3.2 indexer top-k (kernels in cuda/attn.cu).
 *
 * The front end (backend_ops.c) has checked dtypes, shapes, buffers and
 * aliasing. The contents only the device sees (each token's sequence, its
 * position, the block ids it reaches, V3.2's selection) are checked by a
 * device kernel before the op's kernels, which do nothing when it finds a
 * bad token. By default the kernel notes its answer on the device for the
 * next wait (deferred checks, mc_cuda_defer_of: no synchronization per call); with
 * sync_checks it is read back (one stream synchronization per call) and on a
 * refusal the indices are downloaded and checked again here in the CPU op's
 * order, so that the message is the CPU backend's word for word
 * (kernels/cpu/backend_cpu_attn.c). indexer_topk always reads it back: the
 * spans it returns size the op's scratch. */
#include "backend.h"
#include "cuda/backend_cuda_internal.h"
#include "kv_sel_check.h"

#include <stdlib.h>
#include <string.h>

#define AF32(t) ((float *)mc_cuda_at(t))
#define AI32(t) ((int32_t *)mc_cuda_at(t))

static mc_status attn_launched(cudaError_t e, const char *op, mc_err *err)
{
    return mc_cuda_check(e, op, err);
}


/* ---- the refusal's message, as the CPU op words it ---- */

/* Host copies of the indices: seq [n], pos [n], bt (n_seqs, max_blocks), sel (n, k) or NULL. */
typedef struct {
    int32_t *seq, *pos, *bt, *sel;
} kv_host;

static void kv_host_free(kv_host *h)
{
    free(h->seq);
    free(h->pos);
    free(h->bt);
    free(h->sel);
}

static mc_status kv_host_get(const mc_kv_index *ix, const mc_tensor *sel, kv_host *h, mc_err *err)
{
    int64_t n = ix->pos.shape[0];
    size_t nbt = (size_t)mc_tensor_nelems(&ix->block_table);
    memset(h, 0, sizeof *h);
    h->seq = malloc((size_t)n * sizeof *h->seq);
    h->pos = malloc((size_t)n * sizeof *h->pos);
    h->bt = malloc((nbt ? nbt : 1) * sizeof *h->bt);
    h->sel = sel ? malloc((size_t)mc_tensor_nelems(sel) * sizeof *h->sel + 1) : NULL;
    if (!h->seq || !h->pos || !h->bt || (sel && !h->sel)) {
        kv_host_free(h);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory for the index of a refused call");
    }
    mc_status st = mc_tensor_download(&ix->seq, h->seq, err);
    if (st == MC_OK)
        st = mc_tensor_download(&ix->pos, h->pos, err);
    if (st == MC_OK)
        st = mc_tensor_download(&ix->block_table, h->bt, err);
    if (st == MC_OK && sel)
        st = mc_tensor_download(sel, h->sel, err);
    if (st != MC_OK)
        kv_host_free(h);
    return st;
}

/* The CPU's token_ok: the first refusal of token t, or MC_OK. */
static mc_status host_token_ok(const char *op, const kv_host *h, const mc_kv_index *ix,
                               int64_t n_pages, int64_t bs, int64_t t, int chunk, int write,
                               mc_err *err)
{
    int64_t n_seqs = ix->block_table.shape[0], max_blocks = ix->block_table.shape[1];
    int32_t s = h->seq[t], pos = h->pos[t];
    if (s < 0 || s >= n_seqs)
        return mc_err_set(err, MC_ERR_ARG, "%s: token %lld: seq = %d is outside the block "
                          "table's %lld sequences", op, (long long)t, (int)s, (long long)n_seqs);
    if (pos < 0 || pos / bs >= max_blocks)
        return mc_err_set(err, MC_ERR_ARG, "%s: token %lld: pos = %d is outside the block table's "
                          "capacity (%lld blocks of %lld positions)", op, (long long)t, (int)pos,
                          (long long)max_blocks, (long long)bs);
    int64_t lo = write ? pos : chunk > 0 ? pos - pos % chunk : 0;
    for (int64_t j = lo / bs; j <= pos / bs; j++) {
        int32_t b = h->bt[(size_t)s * (size_t)max_blocks + (size_t)j];
        if (b < 0 || b >= n_pages)
            return mc_err_set(err, MC_ERR_ARG, "%s: token %lld: block_table[%d][%lld] = %d is "
                              "outside the cache's %lld blocks", op, (long long)t, (int)s,
                              (long long)j, (int)b, (long long)n_pages);
    }
    return MC_OK;
}

/* Token t's selection row, checked as every backend does (kv_sel_check.h). */
static mc_status host_sel_ok(const kv_host *h, int64_t k, int64_t t, int chunk, mc_err *err)
{
    return mc_kv_sel_row_ok(h->sel + (size_t)t * (size_t)k, k, h->pos[t], chunk, t, err);
}

/* The device found token `bad` at fault: the CPU's message for the first refusal. */
static mc_status kv_explain(const char *op, const mc_kv_index *ix, const mc_tensor *pages,
                            int chunk, int write, const mc_tensor *sel, long long bad,
                            mc_err *err)
{
    kv_host h;
    mc_status st = kv_host_get(ix, sel, &h, err);
    if (st != MC_OK)
        return st;
    int64_t n = ix->pos.shape[0];
    for (int64_t t = 0; t < n && st == MC_OK; t++)
        st = host_token_ok(op, &h, ix, pages->shape[0], pages->shape[1], t, chunk, write, err);
    for (int64_t t = 0; sel && t < n && st == MC_OK; t++)
        st = host_sel_ok(&h, mc_tensor_cols(sel), t, chunk, err);
    kv_host_free(&h);
    if (st == MC_OK) /* the indices changed since the check ran */
        st = mc_err_set(err, MC_ERR_ARG, "%s: token %lld: refused by the device's index check",
                        op, bad);
    return st;
}

/* Queues the content check of every token into c->d_info (chk: the op's
 * MC_CUDA_CHK_*, whose refusal the kernel notes when the checks are
 * deferred; 0: read back always, indexer_topk). */
static mc_status kv_check(mc_cuda_ctx *c, const char *op, int chk, const mck_kv *kv, int chunk,
                          int write, const mc_tensor *sel, mc_err *err)
{
    mck_defer d = {NULL, 0, 0};
    if (chk)
        d = mc_cuda_defer_of(c, chk, 0);
    return attn_launched(mck_kv_check(c->stream, kv, chunk, write, sel ? AI32(sel) : NULL,
                                      sel ? sel->row_stride : 0,
                                      sel ? (int)mc_tensor_cols(sel) : 0, c->d_info, d),
                         op, err);
}

/* Reads the check's answer back (waits for the stream): MC_OK with the
 * longest and the total span, or the refusal. Without max_span and with
 * deferred checks, MC_OK at once (the check kernel noted a refusal for the
 * next wait, kv_check). */
static mc_status kv_finish(mc_cuda_ctx *c, const char *op, const mc_kv_index *ix,
                           const mc_tensor *pages, int chunk, int write, const mc_tensor *sel,
                           long long *max_span, long long *total, mc_err *err)
{
    if (!max_span && !c->sync_checks)
        return MC_OK;
    mc_status st = mc_cuda_read_back(c, op, c->h_info, c->d_info, 3 * sizeof *c->h_info, err);
    if (st != MC_OK)
        return st;
    if (c->h_info[0] >= 0)
        return kv_explain(op, ix, pages, chunk, write, sel, c->h_info[0], err);
    if (max_span)
        *max_span = c->h_info[1];
    if (total)
        *total = c->h_info[2];
    return MC_OK;
}

/* The attention kernel keeps a query and an output row in shared memory. */
static mc_status dims_ok(const char *op, int da, int db, int dv, mc_err *err)
{
    if ((size_t)(da + db + dv) * sizeof(float) <= 40 * 1024)
        return MC_OK;
    return mc_err_set(err, MC_ERR_UNSUPPORTED, "cuda backend: %s: key %d + %d and value %d "
                      "columns per head are more than this backend's attention kernel holds",
                      op, da, db, dv);
}

/* ---- the entries ---- */

mc_status mc_cuda_kv_write(void *ctx, const mc_kv_index *ix, const mc_tensor *src,
                           mc_tensor *pages, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "kv_write";
    mc_status st = mc_cuda_use(c, op, err);
    if (st != MC_OK)
        return st;
    mck_kv kv = mc_cuda_kv_of(ix, pages);
    int64_t rps = mc_tensor_rows(pages) / (pages->shape[0] * pages->shape[1]); /* rows per slot */
    st = kv_check(c, op, MC_CUDA_CHK_KV_WRITE, &kv, 0, 1, NULL, err);
    if (st == MC_OK)
        st = attn_launched(mck_kv_write(c->stream, &kv, AF32(src), src->row_stride, (int)rps,
                                        (int)mc_tensor_cols(pages), AF32(pages),
                                        pages->row_stride, c->d_info),
                           op, err);
    if (st != MC_OK)
        return st;
    return kv_finish(c, op, ix, pages, 0, 1, NULL, NULL, NULL, err);
}

mc_status mc_cuda_attention(void *ctx, const mc_tensor *q, const mc_tensor *k_pages,
                            const mc_tensor *v_pages, const mc_kv_index *ix,
                            const mc_attn_opts *opt, mc_tensor *y, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "attention";
    mc_status st = mc_cuda_use(c, op, err);
    if (st != MC_OK)
        return st;
    mck_kv kv = mc_cuda_kv_of(ix, k_pages);
    int nh = (int)q->shape[1], nkv = (int)k_pages->shape[2];
    mck_attn_src src = {.ka = AF32(k_pages), .lda = k_pages->row_stride,
                        .da = (int)k_pages->shape[3], .v = AF32(v_pages),
                        .ldv = v_pages->row_stride, .dv = (int)v_pages->shape[3], .rps = nkv,
                        .grp = nh / nkv};
    st = dims_ok(op, src.da, 0, src.dv, err);
    if (st == MC_OK)
        st = kv_check(c, op, MC_CUDA_CHK_ATTENTION, &kv, opt->chunk, 0, NULL, err);
    if (st == MC_OK)
        st = attn_launched(mck_attention(c->stream, &kv, &src, AF32(q), q->row_stride, NULL, 0, nh,
                                         AF32(y), y->row_stride, opt->scale,
                                         opt->q_scale ? AF32(opt->q_scale) : NULL, opt->chunk,
                                         NULL, 0, c->d_info),
                           op, err);
    if (st != MC_OK)
        return st;
    return kv_finish(c, op, ix, k_pages, opt->chunk, 0, NULL, NULL, NULL,
                     err);
}

mc_status mc_cuda_mla_decode(void *ctx, const mc_tensor *q_lat, const mc_tensor *q_pe,
                             const mc_tensor *lat_pages, const mc_tensor *pe_pages,
                             const mc_kv_index *ix, const mc_attn_opts *opt, mc_tensor *y,
                             mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "mla_decode";
    mc_status st = mc_cuda_use(c, op, err);
    if (st != MC_OK)
        return st;
    mck_kv kv = mc_cuda_kv_of(ix, lat_pages);
    int64_t n = q_lat->shape[0];
    int nh = (int)q_lat->shape[1], k = opt->sel ? (int)mc_tensor_cols(opt->sel) : 0;
    if (k > MCK_SEL_MAX)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "cuda backend: mla_decode: opt.sel keeps %d "
                          "positions per token, more than the %d this backend sorts", k,
                          MCK_SEL_MAX);
    mck_attn_src src = {.ka = AF32(lat_pages), .lda = lat_pages->row_stride,
                        .da = (int)lat_pages->shape[2], .kb = AF32(pe_pages),
                        .ldb = pe_pages->row_stride, .db = (int)pe_pages->shape[2],
                        .v = AF32(lat_pages), .ldv = lat_pages->row_stride,
                        .dv = (int)lat_pages->shape[2], .rps = 1, .grp = nh};
    int32_t *list = NULL; /* (n, k): each token's kept positions, ascending, once each */
    st = dims_ok(op, src.da, src.db, src.dv, err);
    if (st != MC_OK)
        return st;
    if (opt->sel) {
        void *s = NULL;
        st = mc_cuda_scratch(c, (size_t)n * (size_t)k * sizeof(int32_t) + 4, &s, op, err);
        if (st != MC_OK)
            return st;
        list = s;
    }
    st = kv_check(c, op, MC_CUDA_CHK_MLA_DECODE, &kv, opt->chunk, 0, opt->sel, err);
    if (st == MC_OK && list)
        st = attn_launched(mck_sel_sorted(c->stream, AI32(opt->sel), opt->sel->row_stride, n, k,
                                          list), op, err);
    if (st == MC_OK)
        st = attn_launched(mck_attention(c->stream, &kv, &src, AF32(q_lat), q_lat->row_stride,
                                         AF32(q_pe), q_pe->row_stride, nh, AF32(y),
                                         y->row_stride, opt->scale,
                                         opt->q_scale ? AF32(opt->q_scale) : NULL, opt->chunk,
                                         list, k, c->d_info),
                           op, err);
    if (st != MC_OK)
        return st;
    return kv_finish(c, op, ix, lat_pages, opt->chunk, 0, opt->sel, NULL,
                     NULL, err);
}

mc_status mc_cuda_indexer_topk(void *ctx, const mc_tensor *iq, const mc_tensor *w,
                               const mc_tensor *key_pages, const mc_kv_index *ix,
                               const mc_indexer_opts *opt, mc_tensor *sel, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "indexer_topk";
    mc_status st = mc_cuda_use(c, op, err);
    if (st != MC_OK)
        return st;
    mck_kv kv = mc_cuda_kv_of(ix, key_pages);
    long long max_span = 0, total = 0;
    st = kv_check(c, op, 0, &kv, 0, 0, NULL, err);
    if (st == MC_OK) /* the spans size the scratch: wait for the check */
        st = kv_finish(c, op, ix, key_pages, 0, 0, NULL, &max_span, &total, err);
    if (st != MC_OK)
        return st;
    if (total >= 0x7fffffffLL)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "cuda backend: indexer_topk: the tokens see "
                          "%lld positions in all, more than one sort takes (2^31 - 1)", total);
    int ih = (int)iq->shape[1], id = (int)iq->shape[2];
    size_t need = 0;
    void *s = NULL;
    st = attn_launched(mck_indexer_topk(c->stream, &kv, AF32(iq), iq->row_stride, ih, id, AF32(w),
                                        w->row_stride, AF32(key_pages), key_pages->row_stride,
                                        opt->score_scale, opt->weight_scale, opt->k, max_span,
                                        total, AI32(sel), sel->row_stride, NULL, &need),
                       op, err);
    if (st == MC_OK)
        st = mc_cuda_scratch(c, need, &s, op, err);
    if (st == MC_OK)
        st = attn_launched(mck_indexer_topk(c->stream, &kv, AF32(iq), iq->row_stride, ih, id,
                                            AF32(w), w->row_stride, AF32(key_pages),
                                            key_pages->row_stride, opt->score_scale,
                                            opt->weight_scale, opt->k, max_span, total, AI32(sel),
                                            sel->row_stride, s, &need),
                           op, err);
    return st;
}
