/* cpu/backend_cpu_internal.h - internal to the CPU backend: the entries of
 * its vtable that live outside backend_cpu.c (paged cache ops in
 * backend_cpu_attn.c, the V3.2 indexer in backend_cpu_index.c, routing and
 * experts in backend_cpu_moe.c), with arguments as the mc_op_* of backend.h,
 * already validated by the front end (ctx is unused), and the small helpers
 * they share to reach a tensor's host memory. */
#ifndef MC_BACKEND_CPU_INTERNAL_H
#define MC_BACKEND_CPU_INTERNAL_H

#include "arena.h"
#include "backend.h"
#include "kernels.h"

#include <stdint.h>
#include <string.h>

/* The CPU backend's context: the ops' scratch, one arena per backend (ops
 * take a mark on entry and rewind to it before they return, so a step's
 * ops reuse the same memory and call malloc only when one needs more than
 * any before it). */
typedef struct {
    mc_arena *scratch;
    /* The CPU acting as a device only (mc_backend_cpu_device_init): content
     * checks deferred as the CUDA backend's (sync_checks 0, the default):
     * the first content refusal since the last wait is kept in `pending`
     * (its op returned MC_OK, having written nothing) and returned by the
     * next upload, download or synchronize. */
    int sync_checks;
    mc_status pending_st;
    mc_err pending;
    /* mc_op_note_nonfinite's note until mc_backend_take_nonfinite (tag -1:
     * none; both CPU backends find it at the op) */
    mc_nonfinite_note nf;
    int nf_noted; /* the device: a note call since the last wait (its take waits, as CUDA's) */
} mc_cpu_ctx;

static inline mc_arena *mc_cpu_scratch(void *ctx)
{
    return ((mc_cpu_ctx *)ctx)->scratch;
}

/* Host address of element 0 of t. */
static inline unsigned char *at(const mc_tensor *t)
{
    return (unsigned char *)mc_buffer_mem(t->buf) + t->offset;
}

/* Row r of an F32 or I32 tensor (rows as backend.h collapses them). */
static inline float *row_f32(const mc_tensor *t, int64_t r)
{
    return (float *)at(t) + (size_t)r * (size_t)t->row_stride;
}

/* Row r of a page tensor of F32 or BF16 (a KV cache in bf16; the element
 * size worked out inline: attention asks for a row per position). */
static inline const void *row_kv(const mc_tensor *t, int64_t r)
{
    return at(t) + (size_t)r * (size_t)t->row_stride * (t->dtype == MC_DT_BF16 ? 2u : 4u);
}

static inline int32_t *row_i32(const mc_tensor *t, int64_t r)
{
    return (int32_t *)at(t) + (size_t)r * (size_t)t->row_stride;
}

/* Element i of a contiguous I32 vector. */
static inline int32_t i32_at(const mc_tensor *t, int64_t i)
{
    int32_t v;
    memcpy(&v, at(t) + (size_t)i * sizeof v, sizeof v);
    return v;
}

/* The kernels' view of a validated 2-D weight (borrowed, like t). */
static inline mc_mat to_mat(const mc_tensor *t)
{
    mc_mat m = {.dtype = t->dtype, .rows = (int)t->shape[0], .cols = (int)t->shape[1],
                .row_stride = (size_t)t->row_stride, .transposed = t->transposed,
                .data = at(t), .pack = t->pack};
    if (t->scale_buf) {
        m.scale = (const float *)((const unsigned char *)mc_buffer_mem(t->scale_buf) +
                                  t->scale_offset);
        m.block_rows = t->block_rows;
        m.block_cols = t->block_cols;
        m.scale_cols = (int)t->scale_cols;
    }
    return m;
}

/* Per-token work split over the kernels' pool (backend_cpu_attn.c): calls
 * fn(job, t, u, scratch) for every unit u < per_token of each of n tokens,
 * each unit whole on one thread, with `bytes` of scratch (64-byte aligned,
 * from sa) that is the calling thread's own, so results do not depend on
 * the thread count. `work` (the call's multiply-adds) decides whether the
 * pool is worth waking (at least 2^16); tasks are runs of contiguous units,
 * about 8 per thread. MC_ERR_NOMEM when the scratch does not fit. */
typedef void (*mc_cpu_unit_fn)(void *job, int64_t t, int64_t u, void *scratch);
mc_status mc_cpu_run_units(mc_arena *sa, int64_t n, int64_t per_token, size_t bytes, double work,
                           mc_cpu_unit_fn fn, void *job);

mc_status mc_cpu_kv_write(void *ctx, const mc_kv_index *ix, const mc_tensor *src,
                          mc_tensor *pages, mc_err *err);
mc_status mc_cpu_attention(void *ctx, const mc_tensor *q, const mc_tensor *k_pages,
                           const mc_tensor *v_pages, const mc_kv_index *ix,
                           const mc_attn_opts *opt, mc_tensor *y, mc_err *err);
mc_status mc_cpu_mla_decode(void *ctx, const mc_tensor *q_lat, const mc_tensor *q_pe,
                            const mc_tensor *lat_pages, const mc_tensor *pe_pages,
                            const mc_kv_index *ix, const mc_attn_opts *opt, mc_tensor *y,
                            mc_err *err);

mc_status mc_cpu_indexer_topk(void *ctx, const mc_tensor *iq, const mc_tensor *w,
                              const mc_tensor *key_pages, const mc_kv_index *ix,
                              const mc_indexer_opts *opt, mc_tensor *sel, mc_err *err);
mc_status mc_cpu_router_topk(void *ctx, const mc_tensor *logits, const mc_tensor *bias,
                             const mc_router_opts *opts, mc_tensor *ids, mc_tensor *weights,
                             mc_err *err);
mc_status mc_cpu_moe_permute(void *ctx, const mc_tensor *x, const mc_tensor *ids, mc_tensor *xp,
                             mc_tensor *slot, mc_tensor *offsets, mc_err *err);
mc_status mc_cpu_moe_unpermute(void *ctx, const mc_tensor *yp, const mc_tensor *slot,
                               const mc_tensor *weights, mc_tensor *y, mc_err *err);
mc_status mc_cpu_grouped_experts(void *ctx, const mc_tensor *x, const mc_tensor *offsets,
                                 int n_experts, const mc_tensor *gate, const mc_tensor *up,
                                 const mc_tensor *down, const mc_experts_opts *opts, mc_tensor *y,
                                 mc_err *err);
mc_status mc_cpu_layernorm(void *ctx, const mc_tensor *x, const mc_tensor *w, const mc_tensor *b,
                           float eps, mc_tensor *y, mc_err *err);

#endif
