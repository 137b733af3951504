/* cuda/backend_cuda_internal.h - internal to the CUDA backend's host side
 * (cuda/backend_cuda.c: device, memory, probes, the vtable;
 * cuda/backend_cuda_ops.c: the matmul, row and element-wise op entries;
 * cuda/backend_cuda_attn.c: the paged-KV-cache ones; cuda/backend_cuda_moe.c:
 * the MoE block's). */
#ifndef MC_BACKEND_CUDA_INTERNAL_H
#define MC_BACKEND_CUDA_INTERNAL_H

#include "backend.h"
#include "cuda/cuda_ops.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

/* One layer's expert descriptors for the grouped launch (grouped_experts):
 * 3 n mck_mat (gate[0..n), up[..], down[..]) on the host and on the device,
 * found by the caller's gate array and compared in full at every call. */
typedef struct {
    const void *key;
    int n;
    mck_mat *host;
    void *dev;
} mc_cuda_exmats;

/* One backend: one device, one stream every op is queued on, one cuBLAS
 * handle bound to it. Owned by the mc_backend (freed by its free entry). */
typedef struct {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    int sms;
    char features[256];
    /* op scratch on the device, grown on demand (freed after the stream
     * drains); one op at a time uses it */
    void *scratch;
    size_t scratch_bytes;
    /* a second scratch for ops that call other ops' kernels which use the
     * first (grouped_experts: its g / u rows around matmul) */
    void *scratch2;
    size_t scratch2_bytes;
    /* FP8 weight rows widened to BF16 for cuBLAS (matmul of > 8 tokens;
     * any caller's scratch may hold the activations meanwhile) */
    void *wscratch;
    size_t wscratch_bytes;
    /* small device results an op reads back: rope's refusal, find_nonfinite */
    int *d_flag;
    unsigned long long *d_first;
    long long *d_info; /* [8]: the paged ops' content check (mck_kv_check, mck_v4_check) */
    int *h_flag; /* pinned host copies */
    unsigned long long *h_first;
    long long *h_info;
    int counting;
    mc_backend_counters counters;
    unsigned long long *d_count; /* [2] bytes, multiply-adds counted on the device */
    /* grouped_experts: the descriptor sets (one per layer) and whether the
     * per-expert host loop is forced (MC_CUDA_EXPERTS=loop) */
    mc_cuda_exmats *exm;
    int n_exm, cap_exm;
    unsigned next_exm; /* the set a full cache replaces next */
    int experts_loop;
    /* FP8 products of more than 8 tokens on the GEMV kernel instead of
     * widened rows and cuBLAS (MC_CUDA_FP8=gemv; comparisons) */
    int fp8_gemv;
    /* bytes of BF16 rows widened per cuBLAS call (MC_CUDA_FP8_CHUNK_BYTES,
     * default 128 MiB; the op test makes it small to run several chunks) */
    size_t fp8_chunk_bytes;
    /* v4_index_topk's score rows at once, tokens in chunks
     * (MC_CUDA_V4_INDEX_BYTES, default 256 MiB; the op test makes it small) */
    size_t v4_index_bytes;
    /* uploads and downloads of MC_CUDA_STAGE_MIN bytes or more go through
     * two pinned buffers of MC_CUDA_STAGE_BYTES (made at the first such
     * copy; stage_off: cudaHostAlloc failed, copy from pageable memory),
     * the host copy into one overlapping the DMA from the other; done[k]
     * marks the DMA that last used stage[k] */
    void *stage[2];
    cudaEvent_t done[2];
    int stage_off;
    /* content checks (positions, block ids, expert ids, slots, offsets):
     * sync_checks (MC_CUDA_SYNC_CHECKS=1, mc_backend_set_sync_checks): each
     * op waits for its check's answer and refuses as the CPU op words it;
     * else (the default) the op returns at once, its kernels do nothing on a
     * fault, and the first refusal since the last wait is noted on the device
     * in d_rec[0..3) (by the check kernel, mck_defer) and returned by the next wait
     * (mc_cuda_wait: upload, download, synchronize); noted: a note was
     * queued since the last wait read d_rec */
    int sync_checks;
    /* topk by k passes whatever k (MC_CUDA_TOPK=passes; comparisons) */
    int topk_passes;
    long long *d_rec, *h_rec;
    int noted;
    /* mc_op_note_nonfinite: its note is d_rec[3..7) = {tag, row, col,
     * value's bits} (tag -1: none), read with the refusal's words by a
     * wait when nf_noted (a note kernel queued since the last read) and
     * kept on the host in nf until mc_backend_take_nonfinite; d_nf_first
     * the search's scratch word (~0 between calls) */
    unsigned long long *d_nf_first;
    int nf_noted;
    mc_nonfinite_note nf;
    /* graphs (mc_backend_capture_begin): capturing the stream (what would
     * wait or allocate refuses, mc_cuda_no_capture); gen counts the
     * replacements of memory a graph may hold (scratch regrown, an experts
     * descriptor set replaced): a graph of an older gen is stale */
    int capturing, cap_refused; /* cap_refused: an op refused while capturing */
    unsigned long long gen;
    /* while capturing: the host counters and counting flag of before (the
     * ops count as if counting; their counts go to the graph, added at each
     * launch while counting) */
    mc_backend_counters cap_counters;
    int cap_counting;
    /* cuBLAS's workspace, the backend's own (a captured product allocates none) */
    void *blas_ws;
} mc_cuda_ctx;

/* The ops whose content checks may be deferred (d_rec[0]). */
enum {
    MC_CUDA_CHK_ROPE = 1,
    MC_CUDA_CHK_KV_WRITE,
    MC_CUDA_CHK_ATTENTION,
    MC_CUDA_CHK_MLA_DECODE,
    MC_CUDA_CHK_PERMUTE,
    MC_CUDA_CHK_UNPERMUTE,
    MC_CUDA_CHK_OFFSETS,
    MC_CUDA_CHK_V4_COMPRESS,
    MC_CUDA_CHK_V4_INDEX,
    MC_CUDA_CHK_V4_ATTENTION,
    MC_CUDA_CHK_V4_HASH
};

#define MC_CUDA_STAGE_BYTES ((size_t)16 << 20)
#define MC_CUDA_STAGE_MIN ((size_t)1 << 20)

/* MC_OK, or MC_ERR_INTERNAL "cuda backend: <op>: <CUDA error>" (also for
 * errors of earlier asynchronous work that surface here). */
mc_status mc_cuda_check(cudaError_t e, const char *op, mc_err *err);
/* What a check kernel of op (MC_CUDA_CHK_*; k: the ids' or slots'
 * columns, to name a pair) is given: with deferred checks the note's place
 * (c->noted set: the next wait reads it), else nothing (rec NULL). */
mck_defer mc_cuda_defer_of(mc_cuda_ctx *c, int op, long long k);
/* Waits for the stream; then MC_OK, or (take) the deferred refusal noted
 * since the last wait (MC_ERR_ARG naming the op and the token or pair; err
 * may be NULL). take 0: wait only, the refusal is kept for the next wait.
 * A non-finite note queued since the last read moves to c->nf either way. */
mc_status mc_cuda_wait(mc_cuda_ctx *c, const char *op, int take, mc_err *err);
/* MC_OK, or while a graph is captured MC_ERR_UNSUPPORTED: `what` would wait
 * for the device or allocate, which a graph cannot hold. */
mc_status mc_cuda_no_capture(mc_cuda_ctx *c, const char *what, mc_err *err);
/* bytes at dev copied to the (pinned) host words at host behind everything
 * queued, and waited for: an op reading its check's answer (refused while
 * a graph is captured). Does not take a deferred refusal (mc_cuda_wait). */
mc_status mc_cuda_read_back(mc_cuda_ctx *c, const char *op, void *host, const void *dev,
                            size_t bytes, mc_err *err);
/* cudaSetDevice to the backend's device (the calling thread may be new). */
mc_status mc_cuda_use(mc_cuda_ctx *c, const char *op, mc_err *err);
/* At least `bytes` of device scratch in *p (valid until the next call). */
mc_status mc_cuda_scratch(mc_cuda_ctx *c, size_t bytes, void **p, const char *op, mc_err *err);

/* As mc_cuda_scratch, from the second scratch. */
mc_status mc_cuda_scratch2(mc_cuda_ctx *c, size_t bytes, void **p, const char *op, mc_err *err);

/* FP8 products of more than this many tokens widen their rows to BF16 for
 * cuBLAS (5 bytes moved per weight: read, write, read again); fewer take
 * the GEMV kernel, which reads the weights once per 8 tokens. */
#define MC_CUDA_FP8_WIDEN_TOKENS 32

/* As mc_cuda_scratch, from the widened-weights scratch. */
mc_status mc_cuda_wscratch(mc_cuda_ctx *c, size_t bytes, void **p, const char *op, mc_err *err);

/* Device address of element 0 of t. */
static inline unsigned char *mc_cuda_at(const mc_tensor *t)
{
    return (unsigned char *)mc_buffer_mem(t->buf) + t->offset;
}

/* The kernels' view of an mc_kv_index over pages (n_blocks, block_size, ...). */
static inline mck_kv mc_cuda_kv_of(const mc_kv_index *ix, const mc_tensor *pages)
{
    mck_kv kv = {.bt = (const int32_t *)mc_cuda_at(&ix->block_table),
                 .bt_ld = ix->block_table.row_stride,
                 .n_seqs = (int)ix->block_table.shape[0],
                 .max_blocks = (int)ix->block_table.shape[1],
                 .seq = (const int32_t *)mc_cuda_at(&ix->seq),
                 .pos = (const int32_t *)mc_cuda_at(&ix->pos), .n = ix->pos.shape[0],
                 .n_pages = pages->shape[0], .block_size = (int)pages->shape[1]};
    return kv;
}

/* the op entries (cuda/backend_cuda_ops.c), arguments as the mc_op_* of backend.h */
mc_status mc_cuda_matmul(void *ctx, const mc_tensor *w, const mc_tensor *x, mc_tensor *y,
                         mc_err *err);
mc_status mc_cuda_rmsnorm(void *ctx, const mc_tensor *x, const mc_tensor *w, float eps,
                          mc_tensor *y, mc_err *err);
mc_status mc_cuda_rope(void *ctx, mc_tensor *x, const mc_tensor *pos, const mc_tensor *cs,
                       const mc_tensor *sn, int interleaved, mc_err *err);
mc_status mc_cuda_swiglu(void *ctx, const mc_tensor *g, const mc_tensor *u, mc_tensor *y,
                         mc_err *err);
mc_status mc_cuda_add(void *ctx, const mc_tensor *a, const mc_tensor *b, mc_tensor *y,
                      mc_err *err);
mc_status mc_cuda_softmax(void *ctx, const mc_tensor *x, mc_tensor *y, mc_err *err);
mc_status mc_cuda_embed(void *ctx, const mc_tensor *table, const mc_tensor *ids, int64_t id0,
                        mc_tensor *y, mc_err *err);
mc_status mc_cuda_layernorm(void *ctx, const mc_tensor *x, const mc_tensor *w, const mc_tensor *b,
                            float eps, mc_tensor *y, mc_err *err);
mc_status mc_cuda_topk(void *ctx, const mc_tensor *x, int k, int64_t id0, mc_tensor *ids,
                       mc_tensor *vals, mc_tensor *lse, mc_err *err);
mc_status mc_cuda_find_nonfinite(void *ctx, const mc_tensor *x, int64_t *row, int64_t *col,
                                 mc_err *err);
mc_status mc_cuda_note_nonfinite(void *ctx, const mc_tensor *x, int64_t tag, mc_err *err);
/* The kernels' view of a weight tensor (device pointers, FP8 block scales). */
mck_mat mc_cuda_mck(const mc_tensor *t);
/* Where a block-format product's quantized activations (mck_quantize_act)
 * of n rows of `cols` go: q (n, kp) int8 | d (n, kp / blk) F32 | bsum (n,
 * kp / sub) int16 (none for Q8_0), each on 256 bytes from p. Returns the
 * bytes they take (0 for element types); with a, their places and the
 * geometry (kp: cols rounded up to the block). */
typedef struct {
    int8_t *q;
    float *d;
    int16_t *bsum;
    int kp, blk, sub;
} mc_cuda_qact;
size_t mc_cuda_qact_layout(int dt, int64_t n, int cols, void *p, mc_cuda_qact *a);
/* Weight bytes a product over `rows` rows of w reads (as mc_mat_weight_bytes). */
uint64_t mc_cuda_weight_bytes(const mc_tensor *w, int64_t rows);
/* y (n rows, ldy apart) = x (n rows, ldx apart) W^T on the path mc_cuda_matmul
 * takes for w and n (no counters); uses the first scratch. */
/* MC_OK when this backend has kernels for weights of dtype dt; else
 * MC_ERR_UNSUPPORTED naming op and dt (Q5_K: a device session converts it
 * to Q8_0 at load, mc_model_convert). */
mc_status mc_cuda_weight_dtype_ok(mc_dtype dt, const char *op, mc_err *err);
mc_status mc_cuda_matmul_raw(mc_cuda_ctx *c, const mc_tensor *w, const float *x, long long ldx,
                             int n, float *y, long long ldy, const char *op, mc_err *err);
/* paged KV cache and attention (cuda/backend_cuda_attn.c) */
mc_status mc_cuda_kv_write(void *ctx, const mc_kv_index *ix, const mc_tensor *src,
                           mc_tensor *pages, mc_err *err);
mc_status mc_cuda_attention(void *ctx, const mc_tensor *q, const mc_tensor *k_pages,
                            const mc_tensor *v_pages, const mc_kv_index *ix,
                            const mc_attn_opts *opt, mc_tensor *y, mc_err *err);
mc_status mc_cuda_mla_decode(void *ctx, const mc_tensor *q_lat, const mc_tensor *q_pe,
                             const mc_tensor *lat_pages, const mc_tensor *pe_pages,
                             const mc_kv_index *ix, const mc_attn_opts *opt, mc_tensor *y,
                             mc_err *err);
mc_status mc_cuda_indexer_topk(void *ctx, const mc_tensor *iq, const mc_tensor *w,
                               const mc_tensor *key_pages, const mc_kv_index *ix,
                               const mc_indexer_opts *opt, mc_tensor *sel, mc_err *err);
/* MoE block (cuda/backend_cuda_moe.c) */
mc_status mc_cuda_router_topk(void *ctx, const mc_tensor *logits, const mc_tensor *bias,
                              const mc_router_opts *opts, mc_tensor *ids, mc_tensor *weights,
                              mc_err *err);
mc_status mc_cuda_moe_permute(void *ctx, const mc_tensor *x, const mc_tensor *ids, mc_tensor *xp,
                              mc_tensor *slot, mc_tensor *offsets, mc_err *err);
mc_status mc_cuda_moe_unpermute(void *ctx, const mc_tensor *yp, const mc_tensor *slot,
                                const mc_tensor *weights, mc_tensor *y, mc_err *err);
mc_status mc_cuda_grouped_experts(void *ctx, const mc_tensor *x, const mc_tensor *offsets,
                                  int n_experts, const mc_tensor *gate, const mc_tensor *up,
                                  const mc_tensor *down, const mc_experts_opts *opts,
                                  mc_tensor *y, mc_err *err);

/* DeepSeek-V4 (cuda/backend_cuda_v4.c); set in the vtable unless
 * MC_CUDA_V4=host (the front end's host round trip, for comparisons) */
mc_status mc_cuda_v4_hc_pre(void *ctx, const mc_tensor *x, const mc_tensor *mix,
                            const mc_tensor *base, const mc_tensor *scale, const mc_v4_hc_opts *o,
                            mc_tensor *post, mc_tensor *comb, mc_tensor *y, mc_err *err);
mc_status mc_cuda_v4_hc_post(void *ctx, mc_tensor *x, const mc_tensor *post,
                             const mc_tensor *comb, const mc_tensor *y, mc_err *err);
mc_status mc_cuda_v4_compress(void *ctx, const mc_tensor *kv_pages, const mc_tensor *gate_pages,
                              const mc_tensor *ape, const mc_tensor *norm, const mc_tensor *cs,
                              const mc_tensor *sn, const mc_kv_index *ix,
                              const mc_v4_comp_opts *o, mc_tensor *out_pages, mc_err *err);
mc_status mc_cuda_v4_index_topk(void *ctx, const mc_tensor *iq, const mc_tensor *w,
                                const mc_tensor *key_pages, const mc_kv_index *ix,
                                const mc_v4_index_opts *o, mc_tensor *sel, mc_err *err);
mc_status mc_cuda_v4_attention(void *ctx, const mc_tensor *q, const mc_tensor *kv_pages,
                               const mc_tensor *comp_pages, const mc_tensor *sinks,
                               const mc_tensor *sel, const mc_kv_index *ix,
                               const mc_v4_attn_opts *o, mc_tensor *y, mc_err *err);
mc_status mc_cuda_v4_hash_route(void *ctx, const mc_tensor *logits, const mc_tensor *tok,
                                const mc_tensor *table, const mc_router_opts *opts,
                                mc_tensor *ids, mc_tensor *weights, mc_err *err);

#endif
